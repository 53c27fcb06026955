"""Save and restore an LS-LoRA + GARFA adapter directory (no pickle anywhere in it).

Layout (the Fine-tune contract): the PEFT adapter (``adapter_config.json``, ``adapter_model.safetensors``)
when LoRA is on, ``garfa.safetensors`` + ``garfa.json`` when GARFA is on, and ``model_info.json`` (the
shape facts of the base model, checked before anything is loaded).
"""

from __future__ import annotations

import warnings
from pathlib import Path

from coloc_ray.errors import UserError
from coloc_ray.io import read_json, write_json

MODEL_INFO = "model_info.json"
# Facts that must match for the adapter's tensors to mean anything on the model they are loaded into.
MUST_MATCH = ("model_type", "num_layers", "num_heads", "num_kv_heads", "head_dim", "hidden_size", "vocab_size")


def save_adapter(model, scalers, info, out_dir: str | Path) -> Path:
    """Write the adapter of a trained ``model`` (PEFT or plain + GARFA) into ``out_dir``."""
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


def check_compatible(model, path: str | Path) -> dict:
    """Refuse (UserError) an adapter made for a model of another family, depth or shape; returns its info."""
    from coloc_ray.models import model_info

    p = Path(path)
    if not (p / MODEL_INFO).is_file():
        raise UserError(f"adapter {str(p)!r}: no {MODEL_INFO}; is this a `coloc finetune` output directory?")
    saved = read_json(p / MODEL_INFO)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the MHA warning is not news here
        have = model_info(model).to_dict()
    for key in MUST_MATCH:
        if saved.get(key) != have[key]:
            raise UserError(
                f"adapter {str(p)!r} was trained on {saved.get('name')!r} with {key}={saved.get(key)}, but the "
                f"model given has {key}={have[key]}; load it into the model it was trained on")
    # Names are not compared: the same weights load under an alias, a cache path or a hub id.
    return saved


def load_adapted(model, path: str | Path):
    """Restore LoRA (as a PeftModel) and GARFA (rho + attention patch) from ``path`` onto ``model``.

    Args:
        model: the base model the adapter was trained on (plain HF CausalLM, full precision or 4-bit).
        path: a ``coloc finetune`` output directory.

    Returns:
        The PeftModel (or, for a GARFA-only adapter, ``model`` itself with GARFA applied), in eval mode.

    Raises:
        UserError: the adapter was made for another model family, depth or shape, or the dir is not an adapter.
    """
    p = Path(path)
    check_compatible(model, p)
    has_lora = (p / "adapter_config.json").is_file()
    has_garfa = (p / "garfa.json").is_file()
    if not (has_lora or has_garfa):
        raise UserError(f"adapter {str(p)!r} holds neither a PEFT adapter nor garfa.json")
    if has_lora:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(p))
    if has_garfa:
        from coloc_ray.garfa import load_garfa

        load_garfa(model, p)
    model.eval()
    return model
