"""An independent reference for one attention layer of each family, written from raw weights and the published
architectures (no coloc_ray.garfa, no HF attention, no HF rotary module): fp64, positions 0..S-1.

What differs per family, as the papers / model cards describe it:
- Qwen3, Qwen3-MoE: RMS norm (weight w) on each query and key head before RoPE.
- Gemma 3: the same with Gemma's ``(1 + w)`` norm; RoPE base 10k on sliding layers, 1M (x1/8 linear) on global.
- Gemma 2 / 3: scores scaled by ``query_pre_attn_scalar ** -0.5``; Gemma 2 soft-caps scores at ``cap * tanh(s/cap)``.
- Gemma 2 / 3: sliding layers see the last ``sliding_window`` keys only.
- Phi-3: one fused ``qkv_proj`` (rows: H*d queries, G*d keys, G*d values); Phi-4-mini rotates the first
  ``partial_rotary_factor * d`` dims of each head only.
"""

from __future__ import annotations

import math

import torch


def family_inv_freq(cfg, layer: int) -> torch.Tensor:
    """The inverse frequencies layer ``layer`` rotates with, from the config fields alone (fp64)."""
    d = cfg.head_dim
    rope = cfg.rope_parameters
    kinds = getattr(cfg, "layer_types", None)
    if kinds and kinds[layer] in rope:  # a table per layer type (Gemma 3)
        rope = rope[kinds[layer]]
    rd = int(d * rope.get("partial_rotary_factor", 1.0))
    inv = 1.0 / (rope["rope_theta"] ** (torch.arange(0, rd, 2, dtype=torch.float64) / rd))
    if rope.get("rope_type") == "linear":
        inv = inv / rope["factor"]
    return inv


def _rms(x: torch.Tensor, w: torch.Tensor, eps: float, gemma: bool) -> torch.Tensor:
    w = w.detach().double()
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * ((1.0 + w) if gemma else w)


def _rotate(x: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:
    """Neox-style RoPE of the first ``2 * len(inv)`` dims of ``x`` [..., S, d] at positions 0..S-1."""
    rd = 2 * inv.shape[-1]
    ang = torch.arange(x.shape[-2], dtype=torch.float64)[:, None] * inv[None, :]
    c, s = ang.cos(), ang.sin()
    h = rd // 2
    x1, x2, rest = x[..., :h], x[..., h:rd], x[..., rd:]
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s, rest], dim=-1)


def _qkv_weights(attn, cfg):
    H, G, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    if hasattr(attn, "qkv_proj"):
        w = attn.qkv_proj.weight.detach().double()
        return w[:H * d], w[H * d:H * d + G * d], w[H * d + G * d:]
    return tuple(getattr(attn, n).weight.detach().double() for n in ("q_proj", "k_proj", "v_proj"))


def family_attention_reference(model, layer: int, x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Output of layer ``layer``'s attention (before the residual) for input ``x`` [B, S, D], GARFA ``alpha`` [G]."""
    cfg = model.config
    attn = model.model.layers[layer].self_attn
    mtype = cfg.model_type
    x = x.detach().double()
    B, S, _ = x.shape
    H, G, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    wq, wk, wv = _qkv_weights(attn, cfg)
    q = (x @ wq.T).view(B, S, H, d).transpose(1, 2)
    k = (x @ wk.T).view(B, S, G, d).transpose(1, 2)
    v = (x @ wv.T).view(B, S, G, d).transpose(1, 2)
    if mtype in ("qwen3", "qwen3_moe", "gemma3_text"):
        gemma = mtype.startswith("gemma")
        q = _rms(q, attn.q_norm.weight, cfg.rms_norm_eps, gemma)
        k = _rms(k, attn.k_norm.weight, cfg.rms_norm_eps, gemma)
    inv = family_inv_freq(cfg, layer)
    half = inv.shape[0]
    q = _rotate(q, inv)
    expo = torch.tensor([-i / half for i in range(half)], dtype=torch.float64)  # -2i / rotary_dim
    k = torch.stack([_rotate(k[:, g], inv * alpha[g].double() ** expo) for g in range(G)], dim=1)
    scale = cfg.query_pre_attn_scalar ** -0.5 if mtype.startswith("gemma") else d ** -0.5
    cap = getattr(cfg, "attn_logit_softcapping", None) if mtype == "gemma2" else None
    kinds = getattr(cfg, "layer_types", None)
    window = cfg.sliding_window if kinds and kinds[layer] == "sliding_attention" else None
    i, j = torch.arange(S)[:, None], torch.arange(S)[None, :]
    allowed = (j <= i) & ((i - j < window) if window else True)
    out = torch.empty(B, H, S, d, dtype=torch.float64)
    for h in range(H):
        g = h // (H // G)
        s = q[:, h] @ k[:, g].transpose(-1, -2) * scale
        if cap:
            s = cap * torch.tanh(s / cap)
        out[:, h] = torch.softmax(s.masked_fill(~allowed, float("-inf")), dim=-1) @ v[:, g]
    return out.transpose(1, 2).reshape(B, S, H * d) @ attn.o_proj.weight.detach().double().T


def alpha_of(rho: torch.Tensor) -> torch.Tensor:
    """METHOD 5's alpha = exp(ln 4 * tanh(rho)), fp64."""
    return torch.exp(math.log(4) * torch.tanh(rho.double()))
