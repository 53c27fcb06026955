"""An independent GARFA attention written from raw weights (no coloc_ray.garfa helpers, no HF attention)."""

from __future__ import annotations

import math

import torch


def _rotate(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate the pairs (i, i + d/2) of ``x`` [..., S, d] by ``angles`` [..., S, d/2]."""
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    c, s = angles.cos(), angles.sin()
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)


def _proj(lin, x):
    w = lin.weight.detach().double()
    out = x @ w.T
    if getattr(lin, "bias", None) is not None:
        out = out + lin.bias.detach().double()
    return out


def garfa_attention_reference(attn, x: torch.Tensor, inv_freq: torch.Tensor, alpha: torch.Tensor,
                              attention_scaling: float = 1.0, window: int | None = None) -> torch.Tensor:
    """Causal GQA attention of one HF attention module in fp64, GARFA on the keys.

    Args:
        attn: the HF attention module (only its q/k/v/o ``nn.Linear`` weights are read).
        x: its input hidden states ``[B, S, D]``; positions are 0..S-1.
        inv_freq: the model's base inverse frequencies ``[d/2]``.
        alpha: ``[G]`` GARFA scalers of this layer (ones = plain RoPE).
        attention_scaling: the rotary module's cos/sin multiplier.
        window: sliding-window size (keys with ``i - j >= window`` masked), or None.
    """
    x = x.detach().double()
    B, S, _ = x.shape
    G, d = alpha.shape[0], inv_freq.shape[0] * 2
    q = _proj(attn.q_proj, x).view(B, S, -1, d).transpose(1, 2)  # [B, H, S, d]
    k = _proj(attn.k_proj, x).view(B, S, G, d).transpose(1, 2)  # [B, G, S, d]
    v = _proj(attn.v_proj, x).view(B, S, G, d).transpose(1, 2)
    H = q.shape[1]
    pos = torch.arange(S, dtype=torch.float64)
    inv = inv_freq.double()
    q = _rotate(q, pos[:, None] * inv[None, :]) * attention_scaling  # queries: the model's own frequencies
    expo = torch.tensor([-2.0 * i / d for i in range(d // 2)], dtype=torch.float64)
    kr = torch.empty_like(k)
    for g in range(G):
        inv_g = inv * alpha[g].double() ** expo
        kr[:, g] = _rotate(k[:, g], pos[:, None] * inv_g[None, :]) * attention_scaling
    out = torch.empty(B, H, S, d, dtype=torch.float64)
    i, j = torch.arange(S)[:, None], torch.arange(S)[None, :]
    allowed = j <= i
    if window is not None:
        allowed = allowed & (i - j < window)
    for h in range(H):
        g = h // (H // G)  # each KV head serves H/G consecutive query heads
        scores = q[:, h] @ kr[:, g].transpose(-1, -2) / math.sqrt(d)
        scores = scores.masked_fill(~allowed, float("-inf"))
        out[:, h] = torch.softmax(scores, dim=-1) @ v[:, g]
    merged = out.transpose(1, 2).reshape(B, S, H * d)
    return _proj(attn.o_proj, merged)


def capture_attention(model, layer: int, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``model`` once and return (input hidden states, output) of layer ``layer``'s attention."""
    from coloc_ray.models import decoder_layers

    attn = decoder_layers(model)[layer].self_attn
    seen = {}

    def pre(mod, args, kwargs):
        seen["x"] = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]

    def post(mod, args, kwargs, output):
        seen["y"] = output[0]

    h1 = attn.register_forward_pre_hook(pre, with_kwargs=True)
    h2 = attn.register_forward_hook(post, with_kwargs=True)
    try:
        with torch.no_grad():
            model(input_ids)
    finally:
        h1.remove()
        h2.remove()
    return seen["x"], seen["y"]
