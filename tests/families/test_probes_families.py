"""Both probes on each family's tiny config: the RoPE probe's cached path equals the naive one, factor 1 is
the base loss on every layer (so each layer's own RoPE table is the one scaled), sensitivity reads the blocks."""

from __future__ import annotations

import pytest
import torch

from coloc_ray.models import load_model
from coloc_ray.probes.rope_influence import rope_layer_losses
from coloc_ray.probes.sensitivity import block_outputs, tokenize_right
from tests.families.conftest import NEW_FAMILIES, sharpen

TEXTS = ["def add(a, b):\n    return a + b\n", "The quick brown fox jumps over the lazy dog.", "x = [i * i for i in r]"]


@pytest.mark.parametrize("alias", list(NEW_FAMILIES))
def test_rope_probe_cached_equals_naive_and_factor_one_is_base(alias):
    lm = load_model(alias, device="cpu")
    model = sharpen(lm.model)
    layers = [0, 1, 2, 3]
    factors = [1.0, 4.0]
    cached = rope_layer_losses(model, lm.tokenizer, TEXTS, factors, layers, naive=False, batch_size=2)
    naive = rope_layer_losses(model, lm.tokenizer, TEXTS, factors, layers, naive=True, batch_size=2)
    assert cached["num_tokens"] == naive["num_tokens"] > 0
    assert cached["base_loss"] == pytest.approx(naive["base_loss"], rel=1e-9)
    for f in factors:
        for l in layers:
            assert cached["losses"][f][l] == pytest.approx(naive["losses"][f][l], rel=1e-6, abs=1e-7), (f, l)
    for l in layers:  # factor 1 rebuilds the layer's own table: Gemma 3's local / global base, Phi's partial dims
        assert cached["losses"][1.0][l] == pytest.approx(cached["base_loss"], rel=1e-6, abs=1e-7), l
    moved = max(abs(cached["losses"][4.0][l] - cached["base_loss"]) for l in layers)
    assert moved > 1e-4  # scaling the base changes the loss


@pytest.mark.parametrize("alias", list(NEW_FAMILIES))
def test_sensitivity_reads_every_block_output(alias):
    lm = load_model(alias, device="cpu")
    enc = tokenize_right(lm.tokenizer, TEXTS)
    hs = block_outputs(lm.model, enc["input_ids"], enc["attention_mask"])
    assert len(hs) == 4
    with torch.no_grad():
        ref = lm.model(**enc, output_hidden_states=True).hidden_states
    # hidden_states[l + 1] is block l's output for l < L - 1 (the last one is after the final norm)
    for l in range(3):
        torch.testing.assert_close(hs[l], ref[l + 1], rtol=0, atol=0)
