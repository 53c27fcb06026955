"""RoPE-influence probe (METHOD 2): cached == naive, factor 1 gives 0, independent references for the pieces."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from coloc_ray.probes.api import run_rope_influence
from coloc_ray.probes.evaltexts import default_eval_texts
from coloc_ray.probes.rope_influence import (
    influence_profile,
    loss_sums,
    rope_layer_losses,
    scaled_position_embeddings,
)

# Different lengths, so batches carry right padding and the masks matter.
TEXTS = ["def add(a, b):\n    return a + b\n" * 3, "Question: 2 + 2?\nAnswer: 4\n" * 6, "short text here"]


def _rel_close(a, b, rel=1e-5):
    return abs(a - b) <= rel * max(abs(a), abs(b), 1e-30)


def test_cached_equals_naive_on_every_layer_and_factor(tiny):
    kw = dict(factors=[2.0, 0.5], layers=range(tiny.info.num_layers), max_len=128, batch_size=2)
    cached = rope_layer_losses(tiny.model, tiny.tokenizer, TEXTS, naive=False, **kw)
    naive = rope_layer_losses(tiny.model, tiny.tokenizer, TEXTS, naive=True, **kw)
    assert _rel_close(cached["base_loss"], naive["base_loss"])
    for f in (2.0, 0.5):
        for l in range(tiny.info.num_layers):
            ic = abs(cached["losses"][f][l] - cached["base_loss"])
            inv = abs(naive["losses"][f][l] - naive["base_loss"])
            assert ic > 0, (f, l)  # scaling the frequencies does move the loss
            assert _rel_close(ic, inv), (f, l, ic, inv)  # the influence itself, not just the loss


def test_factor_one_gives_zero_influence_in_both_modes(tiny):
    for naive in (False, True):
        res = rope_layer_losses(tiny.model, tiny.tokenizer, TEXTS, [1.0], range(4), naive=naive, max_len=64)
        assert all(res["losses"][1.0][l] == res["base_loss"] for l in range(4))


def test_base_loss_is_hf_mean_token_cross_entropy(tiny):
    """Independent reference: HF's own causal-LM loss with padding labels set to -100."""
    enc = tiny.tokenizer(TEXTS, padding=True, return_tensors="pt", padding_side="right")
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    with torch.no_grad():
        out = tiny.model(**enc, labels=labels)
    s, n = loss_sums(out.logits, enc["input_ids"], enc["attention_mask"])
    assert s / n == pytest.approx(float(out.loss), rel=1e-6)
    res = rope_layer_losses(tiny.model, tiny.tokenizer, TEXTS, [2.0], [0], max_len=10_000, batch_size=1)
    assert res["base_loss"] == pytest.approx(float(out.loss), rel=1e-5)  # batch size does not change it


def test_scaled_embeddings_equal_a_rotary_with_base_times_f(tiny):
    """For plain RoPE, inv_freq * f**(-2i/d) is RoPE base theta * f: build that rotary module independently."""
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    pos = torch.arange(64)[None]
    x = torch.zeros(1, 64, tiny.info.hidden_size)
    own = tiny.model.model.rotary_emb(x, pos)
    for f in (1.0, 2.0, 0.25):
        cfg = copy.deepcopy(tiny.model.config)
        cfg.rope_parameters = {**cfg.rope_parameters, "rope_theta": cfg.rope_parameters["rope_theta"] * f}
        ref_cos, ref_sin = LlamaRotaryEmbedding(cfg)(x, pos)
        cos, sin = scaled_position_embeddings(tiny.model, pos, f, torch.float32)
        torch.testing.assert_close(cos, ref_cos, atol=2e-5, rtol=0)
        torch.testing.assert_close(sin, ref_sin, atol=2e-5, rtol=0)
        if f == 1.0:  # bit for bit the model's own tables
            assert torch.equal(cos, own[0]) and torch.equal(sin, own[1])


def test_layer_subset_is_interpolated_and_flagged():
    raw = {"base_loss": 1.0, "losses": {2.0: {0: 1.5, 3: 1.1}, 4.0: {0: 2.5, 3: 0.7}}}
    prof = influence_profile(raw, [2.0, 4.0], [0, 3], 5)
    # I_0 = (0.5 + 1.5) / 2 = 1.0, I_3 = (0.1 + 0.3) / 2 = 0.2
    np.testing.assert_allclose(prof["scores"][:4], [1.0, 1.0 - 0.8 / 3, 1.0 - 1.6 / 3, 0.2])
    assert prof["scores"][4] == pytest.approx(0.2)  # past the last probed layer: held constant
    assert prof["interpolated"] == [False, True, True, False, True]
    np.testing.assert_allclose(prof["losses"]["2.0"], [1.5, 1.5 - 0.4 / 3, 1.5 - 0.8 / 3, 1.1, 1.1])


def test_api_subset_matches_full_run_on_probed_layers(tiny):
    full = run_rope_influence(tiny, eval_data=TEXTS, layers=None, max_len=64, num_workers=0)
    sub = run_rope_influence(tiny, eval_data=TEXTS, layers=[0, 3], max_len=64, num_workers=0)
    assert full["interpolated"] == [False] * 4 and sub["interpolated"] == [False, True, True, False]
    for l in (0, 3):
        assert sub["scores"][l] == pytest.approx(full["scores"][l], rel=1e-9)
    assert sub["scores"][1] == pytest.approx((2 * full["scores"][0] + full["scores"][3]) / 3, rel=1e-9)
    assert set(full) >= {"model", "num_layers", "factors", "base_loss", "scores", "interpolated", "losses"}


def test_default_eval_texts_are_fixed_long_and_seeded():
    a, b = default_eval_texts(3), default_eval_texts(3)
    assert a == b and len(a) == 3
    assert all(len(t) >= 2400 for t in a)
    assert len(set(a)) == 3


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_cached_equals_naive_on_smollm2(smollm2):
    a, b = default_eval_texts(2)
    texts = [a, b[:120]]  # ~48 and ~30 tokens: the batch carries padding
    kw = dict(factors=[2.0], layers=range(smollm2.info.num_layers), max_len=48, batch_size=2)
    cached = rope_layer_losses(smollm2.model, smollm2.tokenizer, texts, naive=False, **kw)
    naive = rope_layer_losses(smollm2.model, smollm2.tokenizer, texts, naive=True, **kw)
    for l in range(smollm2.info.num_layers):
        assert _rel_close(cached["losses"][2.0][l], naive["losses"][2.0][l]), l
        ic, inv = (abs(r["losses"][2.0][l] - r["base_loss"]) for r in (cached, naive))
        assert _rel_close(ic, inv, rel=1e-4) or abs(ic - inv) < 1e-6, (l, ic, inv)


@pytest.mark.parametrize("name", ["tiny-qwen2", "tiny-mistral"])
def test_cached_equals_naive_on_other_families(name):
    """Qwen2 builds a mask per layer type, Mistral may pick a sliding-window mask: the cache reuses each."""
    from coloc_ray.models import load_model

    lm = load_model(name)
    kw = dict(factors=[2.0], layers=range(lm.info.num_layers), max_len=64, batch_size=3)
    cached = rope_layer_losses(lm.model, lm.tokenizer, TEXTS, naive=False, **kw)
    naive = rope_layer_losses(lm.model, lm.tokenizer, TEXTS, naive=True, **kw)
    for l in range(lm.info.num_layers):
        ic, inv = (abs(r["losses"][2.0][l] - r["base_loss"]) for r in (cached, naive))
        assert ic > 0 and _rel_close(ic, inv), (l, ic, inv)


@pytest.mark.parametrize("lines, needle", [
    (['{"text": "ok"}', '{"txt": "x"}'], "line 2: missing field 'text'"),
    (['{"text": 3}'], "line 1: field 'text' must be a string"),
    (['{"text": " "}'], "line 1: field 'text' is empty"),
    (['{"text": "ok"}', "nope"], "line 2: not valid JSON"),
    ([], "empty"),
])
def test_bad_eval_file_is_a_user_error_with_its_line(tmp_path, lines, needle):
    from coloc_ray.errors import UserError
    from coloc_ray.probes.evaltexts import load_eval_texts

    f = tmp_path / "eval.jsonl"
    f.write_text("".join(ln + "\n" for ln in lines))
    with pytest.raises(UserError, match=needle):
        load_eval_texts(f)


def test_per_text_sums_reproduce_the_scores_exactly(tiny):
    """The record's per-text CE sums give back base_loss, losses and I_l bit for bit; each text's sum is its
    own HF causal-LM loss times its target count (an independent reference, text by text, no padding)."""
    rec = run_rope_influence(tiny, eval_data=TEXTS, factors=[2.0, 0.5], layers=[0, 2], max_len=64, num_workers=0)
    pt = rec["per_text"]
    assert len(pt["base"]) == len(pt["num_tokens"]) == len(TEXTS) and set(pt["losses"]["2.0"]) == {"0", "2"}
    count = sum(pt["num_tokens"])
    assert count == rec["num_tokens"]
    assert sum(pt["base"]) / count == rec["base_loss"]
    for l in (0, 2):
        per_f = [sum(pt["losses"][k][str(l)]) / count for k in ("2.0", "0.5")]
        assert per_f == [rec["losses"]["2.0"][l], rec["losses"]["0.5"][l]]
        assert float(np.mean([abs(v - rec["base_loss"]) for v in per_f])) == rec["scores"][l]
    for text, s, n in zip(TEXTS, pt["base"], pt["num_tokens"]):
        ids = torch.tensor([tiny.tokenizer(text, truncation=True, max_length=64)["input_ids"]])
        with torch.no_grad():
            hf = float(tiny.model(input_ids=ids, labels=ids).loss)
        assert n == ids.shape[1] - 1 and s / n == pytest.approx(hf, rel=1e-5)
