"""The reversible HF attention patch: keys of KV head g rotate with GARFA's frequencies (METHOD 5).

``apply_garfa`` replaces the ``forward`` of the chosen layers' attention modules with
:func:`_garfa_attention_forward`, a copy of the HF attention of the supported families (transformers 5.19) whose
only change is the key rotation. What differs per family is registered here (:class:`GarfaFamily`): how q, k, v
come out of the projections before RoPE (separate q/k/v_proj; Qwen3 / Gemma 3 RMS-norm each query and key head
first; Phi-3 slices one fused ``qkv_proj``) and the extra arguments of its attention call (sliding window,
Gemma 2's score soft-capping). Everything else is the module's own: its projections (so PEFT LoRA stays in the
forward), its ``scaling`` (Gemma's query_pre_attn_scalar), the attention interface it dispatches to (eager,
sdpa, flash, ...), the KV-cache update. Keys rotate with the layer's own ``inv_freq`` (Gemma 3: a base per layer
type), over the rotary part of the head only (partial rotary, Phi-4-mini). ``remove_garfa`` puts the original
``forward`` back exactly.
"""

from __future__ import annotations

import operator
import sys
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn

from coloc_ray.errors import UserError
from coloc_ray.garfa.core import GARFA_C, GarfaScalers, key_cos_sin, key_inv_freq, rotate_half

SUBMODULE = "garfa_scalers"


def split_qkv(attn: nn.Module, hidden: torch.Tensor, shape: tuple) -> tuple[torch.Tensor, ...]:
    """q, k, v ``[B, heads, S, d]`` from separate ``q_proj`` / ``k_proj`` / ``v_proj`` (Llama layout)."""
    q = attn.q_proj(hidden).view(shape).transpose(1, 2)
    k = attn.k_proj(hidden).view(shape).transpose(1, 2)
    v = attn.v_proj(hidden).view(shape).transpose(1, 2)
    return q, k, v


def normed_qkv(attn: nn.Module, hidden: torch.Tensor, shape: tuple) -> tuple[torch.Tensor, ...]:
    """As :func:`split_qkv`, then ``q_norm`` / ``k_norm`` on each head (Qwen3, Gemma 3): GARFA rotates normed keys."""
    q, k, v = split_qkv(attn, hidden, shape)
    return attn.q_norm(q), attn.k_norm(k), v


def fused_qkv(attn: nn.Module, hidden: torch.Tensor, shape: tuple) -> tuple[torch.Tensor, ...]:
    """q, k, v sliced from one fused ``qkv_proj`` (Phi-3): [H*d queries | G*d keys | G*d values]."""
    qkv = attn.qkv_proj(hidden)
    nq = attn.config.num_attention_heads * attn.head_dim
    nk = attn.config.num_key_value_heads * attn.head_dim
    q, k, v = qkv[..., :nq], qkv[..., nq:nq + nk], qkv[..., nq + nk:]
    return tuple(x.reshape(shape).transpose(1, 2) for x in (q, k, v))


@dataclass(frozen=True)
class GarfaFamily:
    """What GARFA's attention copy needs to know about one family's HF attention.

    Attributes:
        extra_kwargs: ``attn -> dict`` of the extra arguments the family passes to its attention interface.
        qkv: ``(attn, hidden, [B, S, -1, d]) -> (q, k, v)`` each ``[B, heads, S, d]``, before RoPE.
    """

    extra_kwargs: Callable[[nn.Module], dict]
    qkv: Callable = split_qkv


# model_type -> its GarfaFamily.
GARFA_FAMILIES: dict[str, GarfaFamily] = {}


def register_garfa_family(model_type: str, extra_kwargs: Callable[[nn.Module], dict],
                          qkv: Callable = split_qkv) -> None:
    """Declare how GARFA runs the attention of ``model_type`` (see :class:`GarfaFamily`)."""
    GARFA_FAMILIES[model_type] = GarfaFamily(extra_kwargs, qkv)


def garfa_family(model_type: str) -> GarfaFamily | None:
    """The GarfaFamily of ``model_type``, or of the family it is an alias of (``ModelFamily.like``); None if none."""
    from coloc_ray.models.families import FAMILIES

    if model_type in GARFA_FAMILIES:
        return GARFA_FAMILIES[model_type]
    like = getattr(FAMILIES.get(model_type), "like", None)
    return GARFA_FAMILIES.get(like) if like else None


def _own_window(m: nn.Module) -> dict:
    return {"sliding_window": getattr(m, "sliding_window", None)}


register_garfa_family("llama", lambda m: {})
register_garfa_family("qwen2", _own_window)
register_garfa_family("mistral", lambda m: {"sliding_window": getattr(m.config, "sliding_window", None)})
register_garfa_family("qwen3", _own_window, normed_qkv)
register_garfa_family("qwen3_moe", _own_window, normed_qkv)
register_garfa_family("gemma2", lambda m: {**_own_window(m), "softcap": m.attn_logit_softcapping})
register_garfa_family("gemma3_text", _own_window, normed_qkv)
register_garfa_family("phi3", lambda m: {"sliding_window": getattr(m.config, "sliding_window", None)}, fused_qkv)


@dataclass(eq=False)
class _GarfaLink:
    """What a patched attention module needs; a plain object, so it is not registered as a submodule."""

    scalers: GarfaScalers
    row: int
    rope: Callable[[], tuple[torch.Tensor, float]]  # the layer's own (inv_freq, attention_scaling), read live
    extra_kwargs: dict
    eager: Callable
    qkv: Callable = split_qkv
    original_forward: Any = None  # the instance's own ``forward`` before patching; None: it had none (usual)

    def key_tables(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        # Recomputed every forward, with grad: rho changes each optimizer step. The rotary module's inv_freq
        # is read now, not at patch time, so dynamic rope types that update it per forward are followed.
        inv_freq, scaling = self.rope()
        inv = key_inv_freq(inv_freq, self.scalers.alpha()[self.row])
        return key_cos_sin(inv, positions, scaling, dtype)


class _LayerRope:
    """``() -> (inv_freq, attention_scaling)`` of one layer, read live (picklable, unlike a lambda)."""

    def __init__(self, rotary: nn.Module, inv_name: str, scale_name: str):
        self.rotary, self.inv_name, self.scale_name = rotary, inv_name, scale_name

    def __call__(self) -> tuple[torch.Tensor, float]:
        return getattr(self.rotary, self.inv_name), float(getattr(self.rotary, self.scale_name, 1.0))


class _PatchedForward:
    """The patched ``forward`` of one attention module: a picklable callable (a bound method of a function
    that is not an attribute of the class would not survive ``pickle``)."""

    def __init__(self, module: nn.Module):
        self.module = module

    def __call__(self, *args, **kwargs):
        return _garfa_attention_forward(self.module, *args, **kwargs)


def _key_positions(module: nn.Module, hidden_states: torch.Tensor, past_key_values, kwargs: dict) -> torch.Tensor:
    """Positions of the new keys: the ``position_ids`` the decoder passed (the same ones that built the
    model's cos/sin), else the cache length + arange (a direct call without position ids)."""
    pos = kwargs.get("position_ids")
    if pos is not None:
        return pos
    past = past_key_values.get_seq_length(module.layer_idx) if past_key_values is not None else 0
    return torch.arange(hidden_states.shape[1], device=hidden_states.device)[None, :] + past


def _garfa_attention_forward(self, hidden_states: torch.Tensor, position_embeddings=None,
                             attention_mask: torch.Tensor | None = None, past_key_values=None, **kwargs):
    """HF Llama-layout attention with per-KV-head GARFA key rotation (``self`` is the attention module)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    link: _GarfaLink = self._garfa_link
    input_shape = hidden_states.shape[:-1]
    hidden_shape = (*input_shape, -1, self.head_dim)
    query, key, value = link.qkv(self, hidden_states, hidden_shape)

    cos, sin = position_embeddings  # the model's own tables: queries keep them
    query = _rope(query, cos.unsqueeze(1), sin.unsqueeze(1))
    kcos, ksin = link.key_tables(_key_positions(self, hidden_states, past_key_values, kwargs), key.dtype)
    key = _rope(key, kcos, ksin)  # rotated at their own positions, before the cache

    if past_key_values is not None:
        key, value = past_key_values.update(key, value, self.layer_idx)
    interface = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, link.eager)
    out, weights = interface(
        self, query, key, value, attention_mask,
        dropout=0.0 if not self.training else self.attention_dropout,
        scaling=self.scaling, **link.extra_kwargs, **kwargs)
    out = out.reshape(*input_shape, -1).contiguous()
    return self.o_proj(out), weights


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """HF's rotation of the first ``cos.shape[-1]`` dims of each head; the rest passes (partial rotary)."""
    rd = cos.shape[-1]
    if rd == x.shape[-1]:
        return x * cos + rotate_half(x) * sin
    rot, rest = x[..., :rd], x[..., rd:]
    return torch.cat((rot * cos + rotate_half(rot) * sin, rest), dim=-1)


def _check_layers(layers: Sequence[int], num_layers: int, name: str) -> list[int]:
    if isinstance(layers, (str, bytes)) or not hasattr(layers, "__iter__"):
        raise UserError(f"GARFA layers {layers!r} for model {name!r}: give a list of layer indices")
    out = []
    for raw in layers:
        try:
            x = operator.index(raw)  # ints, numpy / 0-d torch ints; not floats or strings
        except TypeError:
            x = None
        if x is None or isinstance(raw, bool):
            raise UserError(f"GARFA layer {raw!r} for model {name!r} is not an integer layer index")
        if not 0 <= x < num_layers:
            raise UserError(f"GARFA layer {x} is out of range for model {name!r} with {num_layers} layers "
                            f"(use 0..{num_layers - 1})")
        if x in out:
            raise UserError(f"GARFA layer {x} appears twice in {list(layers)!r} for model {name!r}; list each once")
        out.append(x)
    return sorted(out)


def apply_garfa(model: nn.Module, layers: Sequence[int], c: float = GARFA_C) -> GarfaScalers:
    """Patch the attention of ``layers`` with GARFA and register the scalers (rho = 0, alpha = 1).

    Works on a plain HF model and on a PEFT-wrapped one (apply after ``get_peft_model``, which freezes
    everything that is not LoRA: rho is created afterwards with ``requires_grad=True``).

    Args:
        model: a causal LM of a family in ``GARFA_FAMILIES``, possibly PEFT- or DDP-wrapped.
        layers: decoder-layer indices Y (any order, no duplicates; stored sorted). Empty patches nothing.
        c: alpha bound, ``alpha in (exp(-c), exp(c))``.

    Returns:
        The :class:`GarfaScalers`, also reachable as ``unwrap_model(model).garfa_scalers``.

    Raises:
        UserError: unsupported family, GARFA already applied, or a layer out of range / duplicated.
    """
    from coloc_ray.models import decoder_layers, rotary_embedding, unwrap_model
    from coloc_ray.models.introspect import layer_rope, layer_rope_names

    base = unwrap_model(model)
    mtype = getattr(base.config, "model_type", "?")
    name = getattr(base.config, "_name_or_path", None) or mtype
    fam = garfa_family(mtype)
    if fam is None:
        raise UserError(f"GARFA does not support model_type {mtype!r} (model {name!r}); supported: "
                        f"{', '.join(sorted(GARFA_FAMILIES))} and their aliases (register_garfa_family() adds one)")
    if get_garfa(base) is not None:
        raise UserError(f"model {name!r} already has GARFA applied; call remove_garfa(model) first")
    blocks = decoder_layers(base)
    layers = _check_layers(layers, len(blocks), name)
    rotary_embedding(base)  # a UserError for a model without RoPE
    attn0 = blocks[0].self_attn
    scalers = GarfaScalers(layers, base.config.num_key_value_heads, attn0.head_dim, c=c)
    scalers.to(device=layer_rope(base, 0)[0].device)
    scalers.rho.requires_grad_(True)
    for row, idx in enumerate(layers):
        attn = blocks[idx].self_attn
        eager = getattr(sys.modules[type(attn).__module__], "eager_attention_forward")
        rope = _LayerRope(*layer_rope_names(base, idx))  # the layer's own table (Gemma 3: per layer type)
        link = _GarfaLink(scalers, row, rope, fam.extra_kwargs(attn), eager, fam.qkv, attn.__dict__.get("forward"))
        attn._garfa_link = link
        attn.forward = _PatchedForward(attn)
    base.add_module(SUBMODULE, scalers)
    return scalers


def get_garfa(model: nn.Module) -> GarfaScalers | None:
    """The model's :class:`GarfaScalers`, or None when GARFA is not applied."""
    from coloc_ray.models import unwrap_model

    return getattr(unwrap_model(model), SUBMODULE, None)


def remove_garfa(model: nn.Module) -> GarfaScalers | None:
    """Undo :func:`apply_garfa`: restore every patched ``forward`` exactly and drop the scalers.

    Returns:
        The removed scalers (None if GARFA was not applied; then nothing changes).
    """
    from coloc_ray.models import decoder_layers, unwrap_model

    base = unwrap_model(model)
    scalers = get_garfa(base)
    for block in decoder_layers(base):
        attn = block.self_attn
        link = attn.__dict__.pop("_garfa_link", None)
        if link is None:
            continue
        if link.original_forward is None:
            del attn.forward
        else:
            attn.forward = link.original_forward
    if scalers is not None:
        delattr(base, SUBMODULE)
    return scalers
