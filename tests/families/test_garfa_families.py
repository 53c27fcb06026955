"""GARFA on each family's tiny config: identity at init, the independent reference for random rho, the
layer's own RoPE table, and cache-consistent greedy generation (METHOD 5)."""

from __future__ import annotations

import pytest
import torch

from coloc_ray.garfa import apply_garfa, remove_garfa
from coloc_ray.models.introspect import layer_rope
from tests.families.conftest import NEW_FAMILIES
from tests.families.reference import alpha_of, family_attention_reference, family_inv_freq
from tests.garfa.reference import capture_attention

ALIASES = list(NEW_FAMILIES)


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("alias", ALIASES)
def test_init_logits_equal_unpatched(family_model, ids, alias, impl):
    model = family_model(alias, impl)
    ref = _logits(model, ids)
    scalers = apply_garfa(model, [0, 1, 3])
    assert scalers.rho.shape == (3, 2)
    torch.testing.assert_close(_logits(model, ids), ref, rtol=0, atol=1e-6)
    with torch.no_grad():  # and GARFA is live: a nonzero rho moves the logits
        scalers.rho.fill_(1.0)
    assert (_logits(model, ids) - ref).abs().max() > 1e-3
    remove_garfa(model)
    torch.testing.assert_close(_logits(model, ids), ref, rtol=0, atol=0)


@pytest.mark.parametrize("alias", ALIASES)
def test_random_rho_matches_reference(family_model, ids, alias):
    model = family_model(alias)
    scalers = apply_garfa(model, [0, 1, 2])  # Gemma: sliding (0, 2) and global (1) layers
    rho = torch.tensor([[0.3, -0.8], [1.5, -1.2], [-1.0, 0.7]])
    with torch.no_grad():
        scalers.rho.copy_(rho)
    for row, layer in enumerate([0, 1, 2]):
        x, y = capture_attention(model, layer, ids)
        want = family_attention_reference(model, layer, x, alpha_of(rho[row]))
        torch.testing.assert_close(y.double(), want, rtol=1e-4, atol=1e-5)
        # the reference is sensitive: plain RoPE (alpha = 1) is far from the GARFA output
        plain = family_attention_reference(model, layer, x, torch.ones(2, dtype=torch.float64))
        assert (plain - want).abs().max() > 1e-3, (alias, layer)


def test_gemma3_layers_rotate_with_their_own_base():
    """Sliding layers use the local base, global ones the scaled global base: in the probe's table and GARFA's."""
    from coloc_ray.models import load_model

    model = load_model("tiny-gemma3").model
    kinds = model.config.layer_types
    assert kinds[0] == "sliding_attention" and kinds[1] == "full_attention"
    for layer in range(4):
        torch.testing.assert_close(layer_rope(model, layer)[0].double(), family_inv_freq(model.config, layer),
                                   rtol=1e-6, atol=0)
    assert not torch.allclose(layer_rope(model, 0)[0], layer_rope(model, 1)[0])


def test_phi3_partial_rotary_leaves_the_pass_through_dims():
    from coloc_ray.models import load_model

    model = load_model("tiny-phi3").model
    inv = layer_rope(model, 0)[0]
    assert inv.numel() * 2 == 12 < model.config.head_dim  # Phi-4-mini style: 3/4 of the head rotates


@pytest.mark.parametrize("alias", ALIASES)
def test_greedy_generation_with_cache_equals_without(family_model, alias):
    model = family_model(alias, "sdpa")
    scalers = apply_garfa(model, [0, 1, 2, 3])
    with torch.no_grad():
        scalers.rho.copy_(torch.randn(4, 2, generator=torch.Generator().manual_seed(3)) * 1.5)
    prompt = torch.randint(0, 250, (1, 5), generator=torch.Generator().manual_seed(4))
    # 5 + 12 tokens > the sliding window (6): the cached path must mask the window as the full one does.
    kw = dict(attention_mask=torch.ones_like(prompt), max_new_tokens=12, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        cached = model.generate(prompt, use_cache=True, **kw)
        full = model.generate(prompt, use_cache=False, **kw)
    assert cached.shape[1] == 17
    assert torch.equal(cached, full)
    # and step by step through the cache, the logits equal the full forward's (keys were cached rotated)
    with torch.no_grad():
        want = model(full, use_cache=False).logits[0, 4:]
        out = model(full[:, :5], use_cache=True)
        steps = [out.logits[0, -1]]
        for t in range(5, full.shape[1]):
            out = model(full[:, t:t + 1], past_key_values=out.past_key_values, use_cache=True)
            steps.append(out.logits[0, -1])
    torch.testing.assert_close(torch.stack(steps), want, rtol=1e-4, atol=1e-5)
