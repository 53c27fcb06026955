"""Read a loaded model's shape (L, H, G, d) and RoPE tables, whatever wrappers (PEFT, DDP) sit on it."""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

import torch
from torch import nn

from coloc_ray.errors import UserError
from coloc_ray.models.families import family_for
from coloc_ray.models.shape import rope_params, shape_from_config


@dataclass(frozen=True)
class ModelInfo:
    """The shape facts every stage needs; saved beside results and adapters."""

    name: str
    model_type: str
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    vocab_size: int
    rope_theta: float
    rope_type: str
    fingerprint: str | None = None  # the weights' fingerprint (models.ref) when loaded by load_model

    @property
    def gqa_ratio(self) -> int:
        return self.num_heads // self.num_kv_heads

    def to_dict(self) -> dict:
        return asdict(self)


def unwrap_model(model: nn.Module) -> nn.Module:
    """Strip DDP / FSDP ``.module`` and PEFT wrappers down to the HF CausalLM."""
    seen = 0
    while seen < 8:
        seen += 1
        if hasattr(model, "get_base_model") and callable(model.get_base_model):
            model = model.get_base_model()
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        else:
            break
    return model


def _get_path(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _name(model: nn.Module) -> str:
    cfg = getattr(model, "config", None)
    return getattr(cfg, "_name_or_path", None) or getattr(cfg, "model_type", None) or type(model).__name__


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of ``model`` (raises a UserError naming the model if they cannot be found)."""
    base = unwrap_model(model)
    fam = family_for(getattr(base.config, "model_type", "?"), _name(base))
    layers = _get_path(base, fam.layers_path)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        raise UserError(f"model {_name(base)!r}: no decoder layers at {fam.layers_path!r}")
    return layers


def rotary_embedding(model: nn.Module) -> nn.Module:
    """The model's shared rotary embedding module (UserError if the model has none).

    Most families hold one table (``inv_freq``); Gemma 3 holds one per layer type (``<type>_inv_freq``):
    :func:`layer_rope` reads the one a given layer uses.
    """
    base = unwrap_model(model)
    fam = family_for(getattr(base.config, "model_type", "?"), _name(base))
    rot = _get_path(base, fam.rotary_path)
    per_type = [t for t in (getattr(base.config, "layer_types", None) or []) if hasattr(rot, f"{t}_inv_freq")]
    if rot is None or not (hasattr(rot, "inv_freq") or per_type):
        raise UserError(
            f"model {_name(base)!r} has no rotary position embedding at {fam.rotary_path!r}: "
            "the RoPE probe and GARFA need a RoPE model"
        )
    return rot


def layer_type(model: nn.Module, layer: int) -> str | None:
    """``config.layer_types[layer]`` (``"sliding_attention"`` / ``"full_attention"``), or None."""
    types = getattr(unwrap_model(model).config, "layer_types", None)
    return types[layer] if types else None


def layer_rope(model: nn.Module, layer: int) -> tuple[torch.Tensor, float]:
    """(``inv_freq``, ``attention_scaling``) that layer ``layer`` rotates with, read live from the rotary module.

    The layer's own: Gemma 3 keeps a table per layer type (local base on sliding layers, global base and
    scaling on full ones). Read at call time, so dynamic rope types that update ``inv_freq`` are followed.
    ``inv_freq`` has ``rotary_dim / 2`` entries (fewer than ``head_dim / 2`` under partial rotary, Phi-4-mini).
    """
    rot, inv_name, scale_name = layer_rope_names(model, layer)
    return getattr(rot, inv_name), float(getattr(rot, scale_name, 1.0))


def layer_rope_names(model: nn.Module, layer: int) -> tuple[nn.Module, str, str]:
    """(rotary module, name of layer ``layer``'s ``inv_freq`` buffer, name of its attention scaling)."""
    rot = rotary_embedding(model)
    kind = layer_type(model, layer)
    if kind is not None and hasattr(rot, f"{kind}_inv_freq"):
        return rot, f"{kind}_inv_freq", f"{kind}_attention_scaling"
    return rot, "inv_freq", "attention_scaling"


def base_inv_freq(model: nn.Module, layer: int = 0) -> torch.Tensor:
    """``inv_freq[i]`` of layer ``layer``, exactly as the model computes them (after its rope scaling), fp32."""
    return layer_rope(model, layer)[0].detach().float().clone()


def final_norm(model: nn.Module) -> nn.Module:
    base = unwrap_model(model)
    fam = family_for(base.config.model_type, _name(base))
    return _get_path(base, fam.norm_path)


def final_logits(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Logits from the last block's output: final norm, LM head, and the family's logit soft-capping (Gemma 2),
    the same steps as the model's own forward."""
    base = unwrap_model(model)
    fam = family_for(base.config.model_type, _name(base))
    logits = base.get_output_embeddings()(final_norm(base)(hidden))
    cap = getattr(base.config, fam.final_logit_softcap, None) if fam.final_logit_softcap else None
    if cap is not None:
        logits = torch.tanh(logits / cap) * cap
    return logits


def model_info(model: nn.Module, name: str | None = None) -> ModelInfo:
    """Collect :class:`ModelInfo`; checks for layers and RoPE, warns once for MHA (G == H)."""
    base = unwrap_model(model)
    cfg = base.config
    layers = decoder_layers(base)
    rotary_embedding(base)
    shape = shape_from_config(cfg)  # the same reading as model_shape() before a load
    heads, kv = shape.num_heads, shape.num_kv_heads
    info = ModelInfo(
        name=name or _name(base), model_type=cfg.model_type, num_layers=len(layers), num_heads=heads,
        num_kv_heads=kv, head_dim=shape.head_dim, hidden_size=cfg.hidden_size, vocab_size=cfg.vocab_size,
        rope_theta=shape.rope_theta, rope_type=str(rope_params(cfg).get("rope_type", "default")),
    )
    if kv == heads:
        warnings.warn(
            f"model {info.name!r} uses multi-head attention (G = H = {heads}), not GQA: "
            "GARFA then has one scaler per query head and no GQA amplification", stacklevel=2)
    return info
