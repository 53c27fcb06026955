"""Fixtures for the GARFA tests: tiny models of each family, built in-process, plus small helpers."""

from __future__ import annotations

import pytest
import torch


def build_tiny_cfg(model_type: str = "llama", *, layers: int = 4, hidden: int = 64, heads: int = 4, kv: int = 2,
                   impl: str = "eager", seed: int = 0, **overrides):
    """A random tiny causal LM from a config (for shapes and rope types the aliases do not cover)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    kw = dict(vocab_size=300, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
              num_attention_heads=heads, num_key_value_heads=kv, head_dim=hidden // heads,
              max_position_embeddings=512, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
              tie_word_embeddings=False)
    kw.update(overrides)
    cfg = AutoConfig.for_model(model_type, **kw)
    cfg._attn_implementation = impl
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation=impl)
    return model.eval()


def sharpen(model, factor: float = 8.0):
    """Scale q/k projections so attention is peaked: position effects (and GARFA's) become large."""
    from coloc_ray.models import decoder_layers

    with torch.no_grad():
        for block in decoder_layers(model):
            block.self_attn.q_proj.weight.mul_(factor)
            block.self_attn.k_proj.weight.mul_(factor)
    return model


@pytest.fixture()
def tiny_model():
    """``tiny_model(alias, impl)`` -> a fresh tiny alias model (fp32, eval) with that attention implementation."""
    from coloc_ray.models import load_model

    def make(alias: str = "tiny-gqa", impl: str = "eager"):
        return load_model(alias, attn_implementation=impl).model

    return make


@pytest.fixture()
def ids():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 250, (2, 24), generator=g)
