"""GARFA math in pure torch (METHOD 5): per-KV-head RoPE frequency scalers for the keys.

For each layer l in a set Y and each KV head g there is one raw scalar ``rho[l, g]`` (init 0) and

    alpha[l, g] = exp(c * tanh(rho[l, g])),   c = ln 4   -> bounded to (1/4, 4), exactly 1 at init.

Keys of KV head g are rotated with ``inv_freq[i] * alpha[l, g] ** (-2i/d)``; queries keep the model's own
frequencies. Nothing here knows about transformers, Ray or MLflow: ``patch.py`` wires it into HF attention.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

GARFA_C = math.log(4)


class GarfaScalers(nn.Module):
    """The learnable GARFA scalers of one model: ``rho`` of shape ``[len(layers), G]``.

    Args:
        layers: decoder-layer indices in Y, one row of ``rho`` each (kept in the given order).
        num_kv_heads: G, the number of KV heads per layer.
        head_dim: d, the attention head dimension (even).
        c: the bound; ``alpha`` lies in ``(exp(-c), exp(c))``.
    """

    def __init__(self, layers: Sequence[int], num_kv_heads: int, head_dim: int, c: float = GARFA_C):
        super().__init__()
        self.layers = tuple(int(x) for x in layers)
        self.num_kv_heads = int(num_kv_heads)
        self.head_dim = int(head_dim)
        self.c = float(c)
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for RoPE, got {head_dim}")
        self.rho = nn.Parameter(torch.zeros(len(self.layers), self.num_kv_heads, dtype=torch.float32))

    def alpha(self) -> torch.Tensor:
        """``exp(c * tanh(rho))``, shape ``[len(layers), G]`` (differentiable)."""
        return torch.exp(self.c * torch.tanh(self.rho))

    def row(self, layer: int) -> int:
        """The row of ``rho`` that belongs to decoder layer ``layer``."""
        return self.layers.index(int(layer))

    def extra_repr(self) -> str:
        return f"layers={list(self.layers)}, num_kv_heads={self.num_kv_heads}, head_dim={self.head_dim}, c={self.c:.6g}"


def key_inv_freq(inv_freq: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Per-KV-head key inverse frequencies ``inv_freq[i] * alpha[g] ** (-2i/d)``.

    Args:
        inv_freq: ``[d/2]``, the model's own inverse frequencies (after its rope scaling).
        alpha: ``[G]`` scalers of one layer.

    Returns:
        ``[G, d/2]`` fp32 (or alpha's dtype if wider); differentiable w.r.t. ``alpha``.
    """
    half = inv_freq.shape[-1]
    # exponent -2i/d with d = 2 * half; alpha ** 0 == 1 and alpha == 1 give exactly inv_freq at init
    expo = -torch.arange(half, device=inv_freq.device, dtype=torch.float32) / half
    scale = alpha.float()[:, None].to(inv_freq.device) ** expo[None, :]
    return inv_freq.float()[None, :] * scale


def key_cos_sin(inv_freq_g: torch.Tensor, position_ids: torch.Tensor, attention_scaling: float = 1.0,
                dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head (cos, sin) tables for keys, in HF's layout ``emb = cat(freqs, freqs)``.

    The arithmetic mirrors HF's rotary module (``pos.float() * inv_freq``, ``cos() * attention_scaling``),
    so with ``alpha == 1`` the tables are bit-identical to the model's own; unlike it, they keep grad.

    Args:
        inv_freq_g: ``[G, d/2]`` from :func:`key_inv_freq`.
        position_ids: ``[B, S]`` (or ``[S]``) integer positions of the keys.
        attention_scaling: the rotary module's ``attention_scaling`` (1.0 for plain RoPE).
        dtype: cast the tables to this dtype (the key dtype), as HF does.

    Returns:
        ``(cos, sin)``, each ``[B, G, S, d]``.
    """
    if position_ids.dim() == 1:
        position_ids = position_ids[None, :]
    pos = position_ids.to(inv_freq_g.device)[:, None, :, None].float()  # [B, 1, S, 1]
    freqs = pos * inv_freq_g[None, :, None, :]  # [B, G, S, d/2]
    emb = torch.cat((freqs, freqs), dim=-1)
    cos = emb.cos() * attention_scaling
    sin = emb.sin() * attention_scaling
    if dtype is not None:
        cos, sin = cos.to(dtype), sin.to(dtype)
    return cos, sin


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """HF's ``rotate_half``: ``cat(-x2, x1)`` over the last dim."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rotate_keys(keys: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate keys ``[B, G, S, d]`` with per-head tables ``[B|1, G, S, d]`` (HF's formula, per head)."""
    return keys * cos + rotate_half(keys) * sin
