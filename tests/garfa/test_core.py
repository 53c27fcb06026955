"""GARFA math (core.py) against hand computations and HF's own rotary module."""

import math

import pytest
import torch

from coloc_ray.garfa.core import GARFA_C, GarfaScalers, key_cos_sin, key_inv_freq, rotate_keys


def test_alpha_is_one_at_init_and_bounded():
    s = GarfaScalers([1, 3], num_kv_heads=3, head_dim=8)
    assert s.rho.shape == (2, 3) and s.rho.dtype == torch.float32
    assert torch.equal(s.alpha(), torch.ones(2, 3))
    assert GARFA_C == math.log(4)
    with torch.no_grad():
        s.rho.copy_(torch.tensor([[-50.0, -0.3, 0.0], [0.7, 2.0, 50.0]]))
    a = s.alpha().double()
    ref = torch.exp(math.log(4) * torch.tanh(s.rho.detach().double()))
    torch.testing.assert_close(a, ref, rtol=1e-6, atol=0)
    assert (a >= 0.25).all() and (a <= 4.0).all()
    torch.testing.assert_close(a[0, 0].item(), 0.25, rtol=1e-6, atol=0)  # saturates at the bounds
    assert s.row(3) == 1


def test_key_inv_freq_matches_hand_formula():
    d = 8
    inv = 1.0 / (10000.0 ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    alpha = torch.tensor([0.5, 1.0, 3.0], dtype=torch.float64)
    got = key_inv_freq(inv.float(), alpha.float()).double()
    for g in range(3):
        for i in range(d // 2):
            want = inv[i].item() * alpha[g].item() ** (-2 * i / d)
            assert got[g, i].item() == pytest.approx(want, rel=1e-6)
    # alpha == 1 leaves the model's frequencies bit-identical
    assert torch.equal(key_inv_freq(inv.float(), torch.ones(2))[1], inv.float())


def test_tables_equal_hf_rotary_at_alpha_one():
    from coloc_ray.models.tiny import build_tiny

    model, _ = build_tiny("tiny-gqa")
    rot = model.model.rotary_emb
    pos = torch.tensor([[0, 1, 2, 7, 100], [3, 4, 5, 6, 9]])
    cos_hf, sin_hf = rot(torch.zeros(1, dtype=torch.float32), pos)  # [B, S, d]
    cos, sin = key_cos_sin(key_inv_freq(rot.inv_freq, torch.ones(2)), pos, rot.attention_scaling, torch.float32)
    assert cos.shape == (2, 2, 5, 16)
    for g in range(2):
        assert torch.equal(cos[:, g], cos_hf) and torch.equal(sin[:, g], sin_hf)


def test_rotate_keys_is_a_per_pair_rotation():
    d = 6
    k = torch.randn(1, 2, 3, d, dtype=torch.float64)
    ang = torch.randn(1, 2, 3, d // 2, dtype=torch.float64)
    cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)
    out = rotate_keys(k, cos, sin)
    x1, x2 = k[..., : d // 2], k[..., d // 2:]
    ref = torch.cat([x1 * ang.cos() - x2 * ang.sin(), x2 * ang.cos() + x1 * ang.sin()], -1)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(out.norm(dim=-1), k.norm(dim=-1))  # a rotation keeps norms


def test_tables_carry_grad_to_rho():
    s = GarfaScalers([0], num_kv_heads=2, head_dim=8)
    inv = 1.0 / (100.0 ** (torch.arange(0, 8, 2, dtype=torch.float32) / 8))
    cos, sin = key_cos_sin(key_inv_freq(inv, s.alpha()[0]), torch.arange(10))
    (cos.sum() + sin.sum()).backward()
    assert s.rho.grad is not None and (s.rho.grad != 0).all()


def test_odd_head_dim_is_refused():
    with pytest.raises(ValueError, match="even"):
        GarfaScalers([0], 2, 7)
