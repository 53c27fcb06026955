"""Save and restore an LS-LoRA + GARFA adapter directory (no pickle anywhere in it).

Layout (the Fine-tune contract): the PEFT adapter (``adapter_config.json``, ``adapter_model.safetensors``)
when LoRA is on, ``garfa.safetensors`` + ``garfa.json`` when GARFA is on, and ``model_info.json`` (the
shape facts of the base model, checked before anything is loaded).
"""

from __future__ import annotations

import warnings
from pathlib import Path

from coloc_ray.errors import UserError
from coloc_ray.io import write_json

MODEL_INFO = "model_info.json"
# Facts that must match for the adapter's tensors to mean anything on the model they are loaded into.
MUST_MATCH = ("model_type", "num_layers", "num_heads", "num_kv_heads", "head_dim", "hidden_size", "vocab_size")


def save_adapter(model, scalers, info, out_dir: str | Path) -> Path:
    """Write the adapter of a trained ``model`` (PEFT or plain + GARFA) into ``out_dir``.

    ``info`` is the base model's ModelInfo; its ``fingerprint`` (set by ``load_model``) goes into
    ``model_info.json`` so the adapter is later refused on other weights of the same shape.
    """
    from coloc_ray.finetune.loop import _unwrap_ddp

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = _unwrap_ddp(model)
    if hasattr(model, "peft_config"):
        model.save_pretrained(str(out), safe_serialization=True)
    if scalers is not None:
        from coloc_ray.garfa import save_garfa

        save_garfa(scalers, out, info)
    write_json(out / MODEL_INFO, info.to_dict())
    return out


def _read_json_file(path: Path, what: str):
    """A JSON file of the adapter dir, or a one-line UserError naming it (truncated, not UTF-8, not JSON)."""
    import json

    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"adapter file {str(path)!r} is corrupt ({type(e).__name__}: {str(e).splitlines()[0]}); "
                        f"{what}") from None
    except OSError as e:
        raise UserError(f"adapter file {str(path)!r} cannot be read ({e.strerror}); {what}") from None


def check_compatible(model, path: str | Path, fingerprint: str | None = None) -> dict:
    """Refuse (UserError) an adapter made for a model of another family, depth or shape, or (given the model's
    weights ``fingerprint``, ``LoadedModel.fingerprint``) for other weights; returns its saved info.

    A base and an instruct checkpoint share every shape fact: only the fingerprint tells them apart. An adapter
    saved before fingerprints were recorded is accepted with a warning; without ``fingerprint`` only the
    shape is checked.
    """
    from coloc_ray.models import model_info

    p = Path(path)
    if not (p / MODEL_INFO).is_file():
        raise UserError(f"adapter {str(p)!r}: no {MODEL_INFO}; is this a `coloc finetune` output directory?")
    saved = _read_json_file(p / MODEL_INFO, "re-run `coloc finetune` or restore the file")
    if not isinstance(saved, dict):
        raise UserError(f"adapter file {str(p / MODEL_INFO)!r} is malformed (a {type(saved).__name__}, expected an "
                        "object of model facts); re-run `coloc finetune` or restore the file")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the MHA warning is not news here
        have = model_info(model).to_dict()
    for key in MUST_MATCH:
        if saved.get(key) != have[key]:
            raise UserError(
                f"adapter {str(p)!r} was trained on {saved.get('name')!r} with {key}={saved.get(key)}, but the "
                f"model given has {key}={have[key]}; load it into the model it was trained on")
    # Names are not compared: the same weights load under an alias, a cache path or a hub id.
    _check_fingerprint(p, saved, fingerprint, have["name"])
    return saved


def _check_fingerprint(p: Path, saved: dict, fingerprint: str | None, name: str) -> None:
    theirs = saved.get("fingerprint")
    if fingerprint is None:
        return
    if not theirs:
        warnings.warn(f"adapter {str(p)!r} records no weights fingerprint (saved before they were recorded): "
                      "only its shape was checked against the model", stacklevel=3)
        return
    if theirs != fingerprint:
        raise UserError(
            f"adapter {str(p)!r} was trained on {saved.get('name')!r} weights {str(theirs)[:12]}, but the model "
            f"given ({name!r}) has weights {fingerprint[:12]} (same shape, another checkpoint); load it into "
            "the model it was trained on")


def check_adapter_weights(path: str | Path, fingerprint: str | None, name: str) -> None:
    """Before any model or engine loads: refuse (UserError) an adapter whose ``model_info.json`` records base weights
    other than ``fingerprint`` (the model's, :func:`coloc_ray.models.ref.spec_fingerprint`). Either unknown: no
    check here (:func:`check_compatible` still checks the shape, and warns about an adapter without one). The vLLM
    engine loads no HF model to hold the adapter against, so this is the check it gets."""
    p = Path(path) / MODEL_INFO
    if fingerprint is None or not p.is_file():
        return
    saved = _read_json_file(p, "re-run `coloc finetune` or restore the file")
    theirs = saved.get("fingerprint") if isinstance(saved, dict) else None
    if theirs and theirs != fingerprint:  # no shape is known here: name what the adapter was trained on
        raise UserError(
            f"adapter {str(path)!r} was trained on {saved.get('name')!r} (model_type={saved.get('model_type')}, "
            f"{saved.get('num_layers')} layers, weights {str(theirs)[:12]}), but the model given ({name!r}) has "
            f"other weights ({fingerprint[:12]}); load it into the model it was trained on")


LORA_FILES = ("adapter_config.json", "adapter_model.safetensors")
GARFA_FILES = ("garfa.json", "garfa.safetensors")


def adapter_parts(path: str | Path) -> tuple[bool, bool]:
    """``(has_lora, has_garfa)`` of an adapter dir, refusing (UserError) one that is incomplete.

    The fine-tune's own ``config.json`` names the layers it trained: a part it names must be there in full,
    or evaluation would silently score a LoRA-only or GARFA-only model as the arm. Without ``config.json``,
    each part must still be whole (both of its files, or neither).
    """
    p = Path(path)
    named = {}
    if (p / "config.json").is_file():
        cfg = _read_json_file(p / "config.json", "re-run `coloc finetune` or restore the file")
        if isinstance(cfg, dict):
            named = {"LoRA": cfg.get("lora_layers") or [], "GARFA": cfg.get("garfa_layers") or []}
    present = {}
    for part, files, key in (("LoRA", LORA_FILES, "lora_layers"), ("GARFA", GARFA_FILES, "garfa_layers")):
        have = [f for f in files if (p / f).is_file()]
        missing = [f for f in files if f not in have]
        if named.get(part) and missing:
            raise UserError(f"adapter {str(p)!r} is incomplete: its config.json names {part} layers "
                            f"{named[part]} ({key}) but {', '.join(missing)} is missing; copy the whole "
                            "`coloc finetune` output directory (or re-run it)")
        if have and missing:
            raise UserError(f"adapter {str(p)!r} is incomplete: {', '.join(have)} without {', '.join(missing)}; "
                            "copy the whole `coloc finetune` output directory (or re-run it)")
        present[part] = bool(have)
    return present["LoRA"], present["GARFA"]


def _check_named_layers(p: Path, model, has_lora: bool) -> None:
    """The loaded parts sit on the layers the adapter's config.json names (a mixed-up directory otherwise)."""
    if not (p / "config.json").is_file():
        return
    cfg = _read_json_file(p / "config.json", "re-run `coloc finetune` or restore the file")
    if not isinstance(cfg, dict):
        return
    if has_lora and cfg.get("lora_layers"):
        peft_cfg = next(iter(model.peft_config.values()))
        got = sorted(peft_cfg.layers_to_transform or [])
        if got != sorted(cfg["lora_layers"]):
            raise UserError(f"adapter {str(p)!r}: adapter_config.json trains LoRA on layers {got} but config.json "
                            f"names {sorted(cfg['lora_layers'])}; the directory mixes two runs, re-run "
                            "`coloc finetune`")


def load_adapted(model, path: str | Path, *, fingerprint: str | None = None):
    """Restore LoRA (as a PeftModel) and GARFA (rho + attention patch) from ``path`` onto ``model``.

    Args:
        model: the base model the adapter was trained on (plain HF CausalLM, full precision or 4-bit).
        path: a ``coloc finetune`` output directory.
        fingerprint: the base model's weights fingerprint (``LoadedModel.fingerprint``): an adapter trained on
            other weights is refused (see :func:`check_compatible`).

    Returns:
        The PeftModel (or, for a GARFA-only adapter, ``model`` itself with GARFA applied), in eval mode.

    Raises:
        UserError: the adapter was made for another model family, depth, shape or weights, is incomplete (a part its
            config.json names is missing), or a file of it is corrupt; or the dir is not an adapter.
    """
    p = Path(path)
    check_compatible(model, p, fingerprint)
    has_lora, has_garfa = adapter_parts(p)
    if not (has_lora or has_garfa):
        raise UserError(f"adapter {str(p)!r} holds neither a PEFT adapter nor garfa.json")
    if has_lora:
        model = _load_lora(model, p)
    if has_garfa:
        from coloc_ray.garfa import load_garfa

        load_garfa(model, p)
        if (p / "config.json").is_file():
            cfg = _read_json_file(p / "config.json", "re-run `coloc finetune` or restore the file")
            meta = _read_json_file(p / "garfa.json", "re-run `coloc finetune`")
            if isinstance(cfg, dict) and cfg.get("garfa_layers") and sorted(cfg["garfa_layers"]) != meta["layers"]:
                raise UserError(f"adapter {str(p)!r}: garfa.json holds layers {meta['layers']} but config.json names "
                                f"{sorted(cfg['garfa_layers'])}; the directory mixes two runs, re-run `coloc finetune`")
    _check_named_layers(p, model, has_lora)
    model.eval()
    return model


def _load_lora(model, p: Path):
    """PEFT's loader; a truncated / random-bytes / mismatched adapter file becomes one line naming it."""
    from peft import PeftModel
    from safetensors import SafetensorError

    _read_json_file(p / "adapter_config.json", "re-run `coloc finetune` or restore the file")
    try:
        return PeftModel.from_pretrained(model, str(p))
    except (SafetensorError, OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise UserError(f"adapter {str(p)!r}: PEFT cannot load adapter_model.safetensors / adapter_config.json "
                        f"({type(e).__name__}: {first}); the file is truncated or corrupt, re-run "
                        "`coloc finetune` or restore it") from None
