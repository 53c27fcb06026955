"""LS-LoRA (METHOD 4): PEFT LoRA on the seven projections of layer set X only, plus GARFA on set Y.

PEFT does the placement (``layers_to_transform`` + ``layers_pattern="layers"``); we only pick the layers.
GARFA is applied AFTER ``get_peft_model``: PEFT freezes every parameter it did not create, rho included.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any, Optional

log = logging.getLogger(__name__)

# The seven projections of a Llama-style block (attention q/k/v/o and the gated MLP).
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class TrainableModel:
    """A base model with LoRA and/or GARFA attached, ready to train."""

    model: Any            # PeftModel when LoRA is on, else the HF model (GARFA-only arm)
    tokenizer: Any
    info: Any             # coloc_ray.models.ModelInfo
    scalers: Any          # coloc_ray.garfa.GarfaScalers or None
    quant: str            # the resolved quantization: "4bit" or "none"


def resolve_quant(quant: str, cuda: Optional[bool] = None) -> str:
    """``auto`` -> ``4bit`` iff CUDA is present (METHOD 4); otherwise the value itself."""
    if quant != "auto":
        return quant
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    if not cuda:
        warnings.warn("no CUDA: the QLoRA base is kept in full precision (the rest of the pipeline is identical)",
                      stacklevel=2)
    return "4bit" if cuda else "none"


def lora_config(layers: list[int], r: int = 16, alpha: float = 32.0, dropout: float = 0.05):
    """The PEFT LoraConfig for LoRA on exactly ``layers`` (the seven projections, nothing else)."""
    from peft import LoraConfig

    return LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(LORA_TARGETS),
        layers_to_transform=sorted(layers), layers_pattern="layers", bias="none", task_type="CAUSAL_LM")


def attach(model, cfg, quantized: bool = False):
    """Wrap ``model`` with LoRA on ``cfg.lora_layers`` and GARFA on ``cfg.garfa_layers``.

    Returns (model, scalers); the LoRA init draws from torch's RNG under ``cfg.seed``.
    """
    import torch

    if quantized:
        from peft import prepare_model_for_kbit_training

        # Gradient checkpointing is what makes QLoRA fit in memory; it does not change the maths.
        # Non-reentrant checkpointing: works under DDP's no_sync and needs no input grads.
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False})
    for p in model.parameters():
        p.requires_grad_(False)
    if cfg.lora_layers:
        from peft import get_peft_model

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            model = get_peft_model(model, lora_config(cfg.lora_layers, cfg.lora_r, cfg.lora_alpha,
                                                      cfg.lora_dropout))
    scalers = None
    if cfg.garfa_layers:
        from coloc_ray.garfa import apply_garfa

        scalers = apply_garfa(model, sorted(cfg.garfa_layers))
    return model, scalers


def build_trainable(cfg, device: Optional[str] = None) -> TrainableModel:
    """Load ``cfg.model`` (4-bit NF4 if asked), check the layer sets, and attach LoRA + GARFA."""
    from coloc_ray.models import load_model

    quant = resolve_quant(cfg.quant)
    lm = load_model(cfg.model, quant=quant, device=device)
    cfg.check_layers(lm.info.num_layers)
    model, scalers = attach(lm.model, cfg, quantized=(quant == "4bit"))
    model.train()
    return TrainableModel(model=model, tokenizer=lm.tokenizer, info=lm.info, scalers=scalers, quant=quant)


def param_groups(model) -> tuple[list, list]:
    """Split the trainable parameters into (LoRA, GARFA); anything else trainable is a bug."""
    lora, garfa, other = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if "garfa_scalers" in name:
            garfa.append(p)
        elif "lora_" in name:
            lora.append(p)
        else:
            other.append(name)
    if other:
        raise RuntimeError(f"unexpected trainable parameters outside LoRA/GARFA: {other[:5]}")
    return lora, garfa


def trainable_counts(model) -> dict[str, int]:
    """Trainable parameter counts, LoRA and GARFA separately (logged with every run)."""
    lora, garfa = param_groups(model)
    return {"lora_params": sum(p.numel() for p in lora), "garfa_params": sum(p.numel() for p in garfa)}


def lora_placement(model) -> dict[int, set[str]]:
    """{layer index: projection names} of every module carrying a LoRA adapter (for tests and logs)."""
    from coloc_ray.models import decoder_layers

    out: dict[int, set[str]] = {}
    for i, layer in enumerate(decoder_layers(model)):
        for name, mod in layer.named_modules():
            if hasattr(mod, "lora_A") and len(getattr(mod, "lora_A")) > 0:
                out.setdefault(i, set()).add(name.rsplit(".", 1)[-1])
    return out
