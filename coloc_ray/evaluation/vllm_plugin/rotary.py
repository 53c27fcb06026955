"""The GARFA rotary for one vLLM attention layer: queries through the model's own rotary, keys per KV head.

Pure torch (no vLLM import), so it can be checked in the main venv against a naive formula. vLLM's attention
calls ``q, k = self.rotary_emb(positions, q, k)`` right before ``self.attn(q, k, v)`` writes k into the paged
KV cache, so rotating k here rotates every key once, at its own position, before it is cached (METHOD 5).
"""

from __future__ import annotations

import torch
from torch import nn


class GarfaKeyRotary(nn.Module):
    """Wraps a layer's rotary module: ``forward(positions, q, k)`` -> (q with the model's RoPE, k with GARFA's).

    Args:
        base: the layer's own vLLM rotary module (``forward(positions, query, key=None)``); it may be shared
            with other layers, so it is wrapped, never changed.
        inv_freq_heads: ``[G_local, rotary_dim / 2]`` key inverse frequencies of this rank's KV heads
            (``inv_freq[i] * alpha[g] ** (-2i/d)``), fp32.
        head_dim: the attention head size.
        is_neox_style: rotate halves (Llama/Qwen2/Mistral) rather than interleaved pairs (GPT-J).
    """

    def __init__(self, base: nn.Module, inv_freq_heads: torch.Tensor, head_dim: int, is_neox_style: bool = True):
        super().__init__()
        self.base = base
        self.head_dim = int(head_dim)
        self.rotary_dim = 2 * int(inv_freq_heads.shape[-1])
        self.is_neox_style = bool(is_neox_style)
        if self.rotary_dim > self.head_dim:
            raise ValueError(f"rotary_dim {self.rotary_dim} > head_dim {self.head_dim}")
        # fp32 like vLLM's own cache computation (t * inv_freq in fp32, then cast): not a weight, not saved.
        self.register_buffer("inv_freq_heads", inv_freq_heads.detach().float().clone(), persistent=False)

    def forward(self, positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor | None = None):
        query, _ = self.base(positions, query, None)  # queries keep the model's frequencies (its fast kernel)
        if key is None:
            return query, None
        return query, self.rotate_keys(positions, key)

    def rotate_keys(self, positions: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        """Rotate ``key`` (``[tokens, G_local * head_dim]`` or ``[tokens, G_local, head_dim]``) per KV head."""
        pos = positions.flatten()
        shape = key.shape
        k = key.reshape(pos.shape[0], -1, self.head_dim)
        # Computed per call, not cached per position: a [max_pos, G, d] table per layer would cost GBs at
        # 128k context, while this is tokens x G x d/2 multiplies (the same fp32 product vLLM's cache holds).
        freqs = pos.to(torch.float32)[:, None, None] * self.inv_freq_heads.to(k.device)[None]
        cos, sin = freqs.cos().to(k.dtype), freqs.sin().to(k.dtype)
        rot, rest = k[..., : self.rotary_dim], k[..., self.rotary_dim:]
        if self.is_neox_style:
            x1, x2 = rot.chunk(2, dim=-1)
            out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
        else:
            x1, x2 = rot[..., 0::2], rot[..., 1::2]
            out = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)
        return torch.cat((out, rest), dim=-1).reshape(shape)

    def extra_repr(self) -> str:
        g, half = self.inv_freq_heads.shape
        return f"kv_heads={g}, rotary_dim={2 * half}, head_dim={self.head_dim}, neox={self.is_neox_style}"
