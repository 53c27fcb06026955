"""Save / load GARFA scalers beside a PEFT adapter: ``garfa.safetensors`` + ``garfa.json`` (no pickle).

``garfa.safetensors`` holds one fp32 tensor ``rho`` of shape ``[|Y|, G]``; ``garfa.json`` is
``{"format_version": 1, "layers", "num_kv_heads", "head_dim", "num_layers", "c", "model", "alpha"}``.
The vLLM plugin reads the same two files, so the format is a contract (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from coloc_ray.errors import UserError
from coloc_ray.garfa.core import GarfaScalers

FORMAT_VERSION = 1
WEIGHTS = "garfa.safetensors"
META = "garfa.json"


def _info_dict(info: Any) -> dict:
    d = info.to_dict() if hasattr(info, "to_dict") else dict(info)
    if "num_layers" not in d:
        raise ValueError("save_garfa: info must give num_layers (pass the model's ModelInfo)")
    return d


def save_garfa(scalers: GarfaScalers, out_dir: str | os.PathLike, info: Any) -> Path:
    """Write ``garfa.safetensors`` (``rho``, fp32) and ``garfa.json`` into ``out_dir``.

    Args:
        scalers: the trained scalers (from :func:`~coloc_ray.garfa.patch.apply_garfa`).
        out_dir: directory (created); usually the PEFT adapter directory.
        info: the model's :class:`~coloc_ray.models.ModelInfo` (or a dict with ``num_layers`` and ``name``).

    Returns:
        The path of ``garfa.json``.
    """
    from safetensors.torch import save_file

    from coloc_ray.io import write_json

    meta = _info_dict(info)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rho = scalers.rho.detach().to("cpu", torch.float32).contiguous()
    fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{WEIGHTS}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({"rho": rho}, tmp, metadata={"format": "coloc-garfa", "format_version": str(FORMAT_VERSION)})
        os.replace(tmp, out / WEIGHTS)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return write_json(out / META, {
        "format_version": FORMAT_VERSION,
        "layers": list(scalers.layers),
        "num_kv_heads": scalers.num_kv_heads,
        "head_dim": scalers.head_dim,
        "num_layers": int(meta["num_layers"]),
        "c": scalers.c,
        "model": meta.get("name", ""),
        "alpha": scalers.alpha().detach().cpu().double().tolist(),
    })


def read_garfa(in_dir: str | os.PathLike) -> tuple[dict, torch.Tensor]:
    """Read and validate ``garfa.json`` + ``garfa.safetensors`` without touching a model.

    Returns:
        ``(meta, rho)`` with ``rho`` fp32 ``[len(layers), num_kv_heads]``.

    Raises:
        UserError: a missing, unreadable or inconsistent file (names the file and the problem).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    d = Path(in_dir)
    meta_p, w_p = d / META, d / WEIGHTS
    for p in (meta_p, w_p):
        if not p.is_file():
            raise UserError(f"GARFA file {p} is missing: save it with save_garfa or point at the adapter directory")
    try:
        meta = json.loads(meta_p.read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise UserError(f"GARFA file {meta_p} has format_version {meta.get('format_version')!r}; "
                            f"this coloc-ray reads version {FORMAT_VERSION}")
        layers = [int(x) for x in meta["layers"]]
        shape = (len(layers), int(meta["num_kv_heads"]))
        int(meta["head_dim"]), int(meta["num_layers"]), float(meta["c"])
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"GARFA file {meta_p} is corrupt ({type(e).__name__}: {e}); re-save it with save_garfa") from None
    # rows of rho map to layers in order; apply_garfa stores layers sorted, so anything else is corrupt
    if layers != sorted(set(layers)) or not math.isfinite(float(meta["c"])) or float(meta["c"]) <= 0:
        raise UserError(f"GARFA file {meta_p} is corrupt (layers {layers} not strictly ascending or c "
                        f"{meta['c']!r} not a positive number); re-save it with save_garfa")
    try:
        tensors = load_file(str(w_p))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"GARFA file {w_p} is corrupt ({e}); re-save it with save_garfa") from None
    rho = tensors.get("rho")
    if rho is None or tuple(rho.shape) != shape or not torch.isfinite(rho).all():
        got = None if rho is None else tuple(rho.shape)
        raise UserError(f"GARFA file {w_p}: tensor 'rho' is {got}, expected finite {shape} "
                        f"(layers x num_kv_heads from {META}); re-save it with save_garfa")
    return meta, rho.float()


def load_garfa(model: nn.Module, in_dir: str | os.PathLike) -> GarfaScalers:
    """Apply GARFA to ``model`` at the saved layers and load the saved ``rho``.

    Raises:
        UserError: files missing/corrupt, or made for a model of another depth, KV-head count or head_dim.
    """
    from coloc_ray.garfa.patch import apply_garfa
    from coloc_ray.models import decoder_layers, unwrap_model

    meta, rho = read_garfa(in_dir)
    base = unwrap_model(model)
    name = getattr(base.config, "_name_or_path", None) or base.config.model_type
    have = {"num_layers": len(decoder_layers(base)), "num_kv_heads": base.config.num_key_value_heads,
            "head_dim": decoder_layers(base)[0].self_attn.head_dim}
    for key, val in have.items():
        if int(meta[key]) != int(val):
            raise UserError(f"GARFA file {Path(in_dir) / META} was made for a model with {key}={meta[key]}, "
                            f"but model {name!r} has {key}={val}; load it into the model it was trained on")
    # The saved "model" name is informational only: one model goes by an alias, a path or a hub id.
    scalers = apply_garfa(model, meta["layers"], c=float(meta["c"]))
    with torch.no_grad():
        scalers.rho.copy_(rho.to(scalers.rho.device))
    return scalers
