"""LS-LoRA (METHOD 4): PEFT LoRA on the seven projections of layer set X only, plus GARFA on set Y.

PEFT does the placement (``layers_to_transform`` + ``layers_pattern="layers"``); we only pick the layers.
The projections go by the family's own module names (``ModelFamily.lora_targets``: Phi-3's fused
``qkv_proj`` / ``gate_up_proj``). MoE experts stored as 3-D parameters go through PEFT's ``target_parameters``,
which ignores ``layers_to_transform`` (peft 0.21): they are listed per layer of X, so the restriction stays exact.
GARFA is applied AFTER ``get_peft_model``: PEFT freezes every parameter it did not create, rho included.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any, Optional

log = logging.getLogger(__name__)

from coloc_ray.models.families import SEVEN_PROJECTIONS as LORA_TARGETS  # noqa: E402,F401 - re-exported (Llama names)


@dataclass
class TrainableModel:
    """A base model with LoRA and/or GARFA attached, ready to train."""

    model: Any            # PeftModel when LoRA is on, else the HF model (GARFA-only arm)
    tokenizer: Any
    info: Any             # coloc_ray.models.ModelInfo
    scalers: Any          # coloc_ray.garfa.GarfaScalers or None
    quant: str            # the resolved quantization: "4bit" or "none"


def resolve_quant(quant: str, cuda: Optional[bool] = None, strategy: str = "ddp") -> str:
    """``auto`` -> ``4bit`` iff CUDA is present (METHOD 4); otherwise the value itself.

    ZeRO-3 cannot shard 4-bit weights, so ``auto`` is ``none`` there; FSDP's 4-bit storage recipe needs CUDA,
    so on CPU FSDP keeps the base in full precision (with a warning).
    """
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    if strategy == "zero3" and quant == "auto":
        log.info("strategy zero3: quant auto -> none (ZeRO-3 cannot shard bitsandbytes 4-bit weights)")
        return "none"
    if strategy == "fsdp" and quant == "4bit" and not cuda:
        warnings.warn("FSDP with a 4-bit base needs CUDA (bnb_4bit_quant_storage=bf16 is a GPU recipe): "
                      "on CPU the base is kept in full precision", stacklevel=2)
        return "none"
    if quant != "auto":
        return quant
    if not cuda:
        warnings.warn("no CUDA: the QLoRA base is kept in full precision (the rest of the pipeline is identical)",
                      stacklevel=2)
    return "4bit" if cuda else "none"


def lora_config(layers: list[int], r: int = 16, alpha: float = 32.0, dropout: float = 0.05,
                model_type: str = "llama"):
    """The PEFT LoraConfig for LoRA on exactly ``layers``: the family's projections (and experts), nothing else.

    Raises:
        UserError: an MoE family (expert parameters) with ``dropout != 0``, which PEFT's ParamWrapper refuses.
    """
    from peft import LoraConfig

    from coloc_ray.errors import UserError
    from coloc_ray.models.families import family_for

    fam = family_for(model_type, model_type)
    layers = sorted(layers)
    # Per-layer names: target_parameters matches by suffix and does not honour layers_to_transform.
    params = [f"layers.{l}.{p}" for l in layers for p in fam.lora_target_parameters]
    if params and dropout:
        raise UserError(f"training.lora_dropout = {dropout}: LoRA on the experts of a {model_type!r} model "
                        "(PEFT target_parameters) needs lora_dropout 0; set training.lora_dropout: 0")
    return LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(fam.lora_targets),
        target_parameters=params or None, layers_to_transform=layers, layers_pattern="layers", bias="none",
        task_type="CAUSAL_LM")


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
                                                      cfg.lora_dropout, model.config.model_type))
    scalers = None
    if cfg.garfa_layers:
        from coloc_ray.garfa import apply_garfa

        scalers = apply_garfa(model, sorted(cfg.garfa_layers))
    return model, scalers


def build_trainable(cfg, device: Optional[str] = None) -> TrainableModel:
    """Load ``cfg.model`` (4-bit NF4 if asked), check the layer sets, and attach LoRA + GARFA."""
    from coloc_ray.models import load_model

    quant = resolve_quant(cfg.quant, strategy=cfg.strategy)
    fsdp_4bit = quant == "4bit" and cfg.strategy == "fsdp"
    if fsdp_4bit:
        lm = _load_fsdp_4bit(cfg.model, device)
    else:
        lm = load_model(cfg.model, quant=quant, device=device)
    from coloc_ray.models.ref import check_fingerprint

    check_fingerprint(cfg.model, lm.fingerprint, getattr(cfg, "model_fingerprint", None))  # on every worker
    cfg.check_layers(lm.info.num_layers)
    model, scalers = attach(lm.model, cfg, quantized=(quant == "4bit"))
    if fsdp_4bit:
        _uniform_bf16(model)
    model.train()
    return TrainableModel(model=model, tokenizer=lm.tokenizer, info=lm.info, scalers=scalers, quant=quant)


def _load_fsdp_4bit(spec: str, device: Optional[str]):
    """Load NF4 with ``bnb_4bit_quant_storage=bf16`` (strategies.fsdp_4bit_quant_kwargs) and bf16 weights.

    ``load_model`` takes no quantization kwargs, so its 4-bit recipe is swapped for the FSDP one for this call.
    """
    import torch
    from transformers import BitsAndBytesConfig

    from coloc_ray.finetune.strategies import fsdp_4bit_quant_kwargs
    from coloc_ray.models import loading

    original = loading._quant_kwargs
    loading._quant_kwargs = lambda q: {"quantization_config": BitsAndBytesConfig(**fsdp_4bit_quant_kwargs())}
    try:
        return loading.load_model(spec, quant="4bit", dtype=torch.bfloat16, device=device)
    finally:
        loading._quant_kwargs = original


def _uniform_bf16(model) -> None:
    """Cast every float tensor to bf16: an FSDP unit flattens its tensors into one flat parameter, which needs
    one dtype (prepare_model_for_kbit_training and PEFT made norms and LoRA fp32; the NF4 storage is bf16)."""
    import torch

    for p in model.parameters():
        if p.is_floating_point() and p.dtype != torch.bfloat16 and type(p).__name__ != "Params4bit":
            p.data = p.data.to(torch.bfloat16)


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
    """{layer index: adapted names} of every module / expert parameter carrying a LoRA adapter (tests, logs).

    Modules by their own name (``q_proj``, Phi-3's ``qkv_proj``); expert parameters as ``experts.<param>``
    (PEFT nests one ParamWrapper per parameter, each under ``base_layer``).
    """
    from coloc_ray.models import decoder_layers

    out: dict[int, set[str]] = {}
    for i, layer in enumerate(decoder_layers(model)):
        for name, mod in layer.named_modules():
            if hasattr(mod, "lora_A") and len(getattr(mod, "lora_A")) > 0:
                parts = [p for p in name.split(".") if p != "base_layer"]
                param = getattr(mod, "parameter_name", None)
                out.setdefault(i, set()).add(f"{parts[-1]}.{param}" if param else parts[-1])
    return out
