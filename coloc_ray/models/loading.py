"""Loading a model for the probes, the fine-tune and the evaluation (``--model`` is resolved in ``resolve.py``)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coloc_ray.errors import UserError
from coloc_ray.models.resolve import ALIASES, first_line, register_alias, resolve_model_dir

__all__ = ["ALIASES", "LoadedModel", "check_model_spec", "load_model", "register_alias", "resolve_model_dir"]

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A model ready for the probes / fine-tune / eval, with its tokenizer and shape facts."""

    model: Any
    tokenizer: Any
    info: Any  # ModelInfo
    spec: str
    path: str  # a local directory from_pretrained can read (what Ray workers and vLLM load)
    fingerprint: str | None = None  # models.ref: the weights' sha256 fingerprint (None: a hub id not cached)


def _quant_kwargs(quant: str) -> dict:
    """``quant``: 'none' (full precision), '4bit' (NF4 + double quant, bf16 compute), 'auto' (4bit iff CUDA)."""
    import torch

    if quant not in ("none", "4bit", "auto"):
        raise UserError(f"--quant {quant!r}: use one of 4bit, none, auto")
    if quant == "auto":
        if not torch.cuda.is_available():
            warnings.warn("no CUDA: QLoRA base kept in full precision (the rest of the pipeline is identical)")
            return {}
        quant = "4bit"
    if quant == "none":
        return {}
    from transformers import BitsAndBytesConfig

    return {"quantization_config": BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16)}


def check_model_spec(spec: str) -> None:
    """Up-front check of ``--model`` that reads only files (no torch, no conversion): a local directory's
    config.json must be a UTF-8 JSON object with a ``model_type`` of a supported family. UserError otherwise."""
    import json

    from coloc_ray.models.families import family_for

    if spec in ALIASES:
        return
    path, extra = resolve_model_dir(spec)
    if extra:
        return  # a .gguf: reading its header is a full parse, the load checks it
    cfg_file = Path(path) / "config.json"
    if not cfg_file.is_file():  # a hub id: checked when its config is in the local HF cache
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(path, "config.json")
        except Exception:  # noqa: BLE001 - an unusable cache only means "not checkable offline"
            cached = None
        if not isinstance(cached, str):
            return
        cfg_file = Path(cached)
    try:
        cfg = json.loads(cfg_file.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"--model {spec!r}: {str(cfg_file)!r} is corrupt ({type(e).__name__}: {first_line(e)}); "
                        "fix or re-download config.json") from None
    except OSError as e:
        raise UserError(f"--model {spec!r}: cannot read {str(cfg_file)!r} ({e.strerror})") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model_type"), str):
        raise UserError(f"--model {spec!r}: {str(cfg_file)!r} has no model_type (not a transformers config); "
                        "fix or re-download config.json")
    family_for(cfg["model_type"], spec)


@contextlib.contextmanager
def _file_errors(spec: str, what: str):
    """A damaged model file (truncated or random safetensors, broken tokenizer JSON) as one line naming it."""
    from safetensors import SafetensorError

    try:
        yield
    except (SafetensorError, OSError, ValueError, EOFError) as e:
        raise UserError(f"--model {spec!r}: cannot load its {what} ({type(e).__name__}: {first_line(e)}); the "
                        "files are truncated or corrupt: re-download or re-convert the model") from None


def load_model(spec, *, dtype=None, quant: str = "none", attn_implementation: str | None = "sdpa",
               device: str | None = None) -> LoadedModel:
    """Load ``spec`` (alias, hub id, HF dir or .gguf) with its tokenizer; checks it is a supported GQA RoPE model.

    Args:
        spec: what the user passed to ``--model``, or a :class:`~coloc_ray.models.ref.ModelRef`: then the
            weights are loaded from ``ref.local_path()``, which refuses (UserError) weights on this node other
            than the ones the study resolved; errors and ``LoadedModel.spec`` keep the user's spelling.
        dtype: torch dtype of the weights (default fp32; the probes need fp32).
        quant: ``none`` | ``4bit`` | ``auto`` (see :func:`_quant_kwargs`).
        attn_implementation: ``eager`` or ``sdpa`` (passed to HF).
        device: ``cpu``/``cuda``; default: CUDA when present.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from coloc_ray.models.families import family_for
    from coloc_ray.models.introspect import model_info
    from coloc_ray.models.ref import ModelRef, located

    if isinstance(spec, ModelRef):
        ref, spec = spec, spec.spec
        path, extra = resolve_model_dir(ref.local_path())
        if ref.kind == "hub" and not Path(path).exists() and ref.revision:
            extra["revision"] = ref.revision  # downloaded now: exactly the commit the study resolved
        fingerprint = ref.fingerprint
    else:
        path, extra = resolve_model_dir(spec)
        fingerprint = None
    if "gguf_file" not in extra:
        try:
            cfg = AutoConfig.from_pretrained(path, **extra)  # extra: at most a hub revision here
        except (OSError, ValueError) as e:  # not JSON, not UTF-8, not an object, no model_type
            raise UserError(f"--model {spec!r}: cannot read its config ({first_line(e)}); fix or re-download "
                            "config.json") from None
        family_for(cfg.model_type, spec)
        if attn_implementation == "sdpa" and getattr(cfg, "attn_logit_softcapping", None):
            # HF's sdpa path silently drops Gemma 2's attention-score soft-cap; eager applies it (as vLLM does).
            log.info("%s: attention logit soft-capping needs eager attention (sdpa drops it): using eager", spec)
            attn_implementation = "eager"
    qkw = _quant_kwargs(quant)
    if qkw and "gguf_file" in extra:
        raise UserError(f"--model {spec!r}: 4-bit cannot load from GGUF; convert it once (coloc models prepare)")
    dtype = dtype or torch.float32
    with _file_errors(spec, "tokenizer"):
        tok = AutoTokenizer.from_pretrained(path, **extra)
    with _file_errors(spec, "weights"):
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, attn_implementation=attn_implementation, **extra, **qkw)
    if not qkw:
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model.to(device)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.eval()
    fingerprint = fingerprint or located(spec, path, extra)[3]  # cached per file: cheap after the first time
    info = dataclasses.replace(model_info(model, name=spec), fingerprint=fingerprint)
    return LoadedModel(model=model, tokenizer=tok, info=info, spec=spec, path=path, fingerprint=fingerprint)
