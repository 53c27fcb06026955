"""Read a loaded model's shape (L, H, G, d) and RoPE tables, whatever wrappers (PEFT, DDP) sit on it."""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

import torch
from torch import nn

from coloc_ray.errors import UserError
from coloc_ray.models.families import family_for


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
    """The model's shared rotary embedding module (UserError if the model has none)."""
    base = unwrap_model(model)
    fam = family_for(getattr(base.config, "model_type", "?"), _name(base))
    rot = _get_path(base, fam.rotary_path)
    if rot is None or not hasattr(rot, "inv_freq"):
        raise UserError(
            f"model {_name(base)!r} has no rotary position embedding at {fam.rotary_path!r}: "
            "the RoPE probe and GARFA need a RoPE model"
        )
    return rot


def base_inv_freq(model: nn.Module) -> torch.Tensor:
    """``inv_freq[i]``, i < d/2, exactly as the model computes them (after its own rope_scaling), fp32."""
    return rotary_embedding(model).inv_freq.detach().float().clone()


def final_norm(model: nn.Module) -> nn.Module:
    base = unwrap_model(model)
    fam = family_for(base.config.model_type, _name(base))
    return _get_path(base, fam.norm_path)


def model_info(model: nn.Module, name: str | None = None) -> ModelInfo:
    """Collect :class:`ModelInfo`; checks for layers and RoPE, warns once for MHA (G == H)."""
    base = unwrap_model(model)
    cfg = base.config
    layers = decoder_layers(base)
    rotary_embedding(base)
    heads = cfg.num_attention_heads
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    rope = getattr(cfg, "rope_parameters", None) or {}
    if isinstance(rope, dict) and "rope_theta" not in rope and rope:  # per-layer-type dicts
        rope = next(iter(rope.values())) if isinstance(next(iter(rope.values())), dict) else rope
    theta = float(rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0)))
    info = ModelInfo(
        name=name or _name(base), model_type=cfg.model_type, num_layers=len(layers), num_heads=heads,
        num_kv_heads=kv, head_dim=head_dim, hidden_size=cfg.hidden_size, vocab_size=cfg.vocab_size,
        rope_theta=theta, rope_type=str(rope.get("rope_type", "default")),
    )
    if kv == heads:
        warnings.warn(
            f"model {info.name!r} uses multi-head attention (G = H = {heads}), not GQA: "
            "GARFA then has one scaler per query head and no GQA amplification", stacklevel=2)
    return info
