"""Fixtures for the per-family tests: each family's tiny alias (its quirks switched on, docs/MODELS.md)."""

from __future__ import annotations

import pytest
import torch

from coloc_ray.models.tiny import TINY_SHAPES

# alias -> model_type of every tiny family model past the first three (Llama, Qwen2, Mistral: tests/garfa), read
# from coloc_ray/models/tiny.py, so a family's tiny alias there is in every per-family test here.
NEW_FAMILIES = {alias: shape[0] for alias, shape in TINY_SHAPES.items()
                if shape[0] not in ("llama", "qwen2", "mistral")}


def sharpen(model, factor: float = 4.0):
    """Make attention peaked, so positions (and GARFA) matter: scale what sets the size of q and k.

    With q/k norms the projection scale cancels, so the norm weights are scaled (Gemma's as ``1 + w``);
    a fused qkv_proj has its query and key rows scaled.
    """
    cfg = model.config
    H, G, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    with torch.no_grad():
        for block in model.model.layers:
            a = block.self_attn
            if hasattr(a, "q_norm"):
                for n in (a.q_norm, a.k_norm):
                    if cfg.model_type.startswith("gemma"):
                        n.weight.copy_((1 + n.weight) * factor - 1)
                    else:
                        n.weight.mul_(factor)
            elif hasattr(a, "qkv_proj"):
                a.qkv_proj.weight[:(H + G) * d].mul_(factor)
            else:
                a.q_proj.weight.mul_(factor)
                a.k_proj.weight.mul_(factor)
    return model


@pytest.fixture()
def family_model():
    """``family_model(alias, impl="eager", sharp=True)`` -> a fresh fp32 eval model of that tiny alias."""
    from coloc_ray.models import load_model

    def make(alias: str, impl: str = "eager", sharp: bool = True):
        model = load_model(alias, attn_implementation=impl, device="cpu").model
        return sharpen(model) if sharp else model

    return make


@pytest.fixture()
def ids():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 250, (2, 20), generator=g)
