"""GARFA on the real SmolLM2-135M (30 layers, 9 q / 3 kv heads): init parity and the reference attention."""

import math

import pytest
import torch

from coloc_ray.garfa import apply_garfa, remove_garfa
from coloc_ray.models import base_inv_freq, decoder_layers
from tests.garfa.reference import capture_attention, garfa_attention_reference


@pytest.mark.slow
def test_smollm2_init_parity_and_reference(smollm2):
    model, tok = smollm2.model, smollm2.tokenizer
    ids = tok("def is_palindrome(s):\n    return s == s[::-1]", return_tensors="pt").input_ids
    with torch.no_grad():
        ref = model(ids).logits
    scalers = apply_garfa(model, [0, 14, 29])
    try:
        assert scalers.rho.shape == (3, 3)
        with torch.no_grad():
            torch.testing.assert_close(model(ids).logits, ref, rtol=0, atol=1e-6)
            scalers.rho.copy_(torch.tensor([[0.5, -0.5, 1.0], [0.2, 0.9, -1.3], [-0.4, 0.3, 0.8]]))
        x, y = capture_attention(model, 14, ids)
        alpha = torch.exp(math.log(4) * torch.tanh(torch.tensor([0.2, 0.9, -1.3], dtype=torch.float64)))
        want = garfa_attention_reference(decoder_layers(model)[14].self_attn, x, base_inv_freq(model), alpha)
        torch.testing.assert_close(y.double(), want, rtol=1e-4, atol=1e-4)
    finally:
        remove_garfa(model)  # the session fixture is shared with other tests
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref)
