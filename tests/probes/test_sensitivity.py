"""Sensitivity probe (METHOD 1) on the tiny model against hand computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from coloc_ray.errors import UserError
from coloc_ray.probes.pairs import MinimalPair, load_pairs
from coloc_ray.probes.sensitivity import aggregate, pair_deltas, pool, top_k_layers

PAIR = MinimalPair("p", "code", "def f(s):\n    return s == s[::-1]", "def f(s):\n    return s == s[1:]")
LONG = MinimalPair("long", "code", "x = 1\n" * 40, "x = 2\n" * 40)


def _hand_block_outputs(lm, text):
    """Block outputs of one unpadded text: hidden_states[l + 1] for l < L-1 (pre-norm), own hook for the last."""
    ids = torch.tensor([lm.tokenizer(text)["input_ids"]])
    layers = lm.model.model.layers
    last = {}
    h = layers[-1].register_forward_hook(lambda m, a, o: last.setdefault("h", o[0] if isinstance(o, tuple) else o))
    try:
        with torch.no_grad():
            hs = lm.model(input_ids=ids, output_hidden_states=True).hidden_states
    finally:
        h.remove()
    outs = [hs[l + 1][0] for l in range(len(layers) - 1)] + [last["h"][0]]
    return [o.double().numpy() for o in outs]


def _np_delta(a, b):
    return 1.0 - float(a @ b) / (np.linalg.norm(a) * np.linalg.norm(b))


def test_mean_pooling_matches_hand_cosine_over_every_layer(tiny):
    got = pair_deltas(tiny.model, tiny.tokenizer, [PAIR, LONG], "mean")["p"]
    hc, hi = _hand_block_outputs(tiny, PAIR.correct), _hand_block_outputs(tiny, PAIR.incorrect)
    want = [_np_delta(a.mean(0), b.mean(0)) for a, b in zip(hc, hi)]
    assert len(got) == tiny.info.num_layers == 4
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-9)
    assert min(want) > 1e-6  # the pair really differs at every layer


def test_last_pooling_uses_the_last_real_token(tiny):
    got = pair_deltas(tiny.model, tiny.tokenizer, [PAIR, LONG], "last")["p"]
    hc, hi = _hand_block_outputs(tiny, PAIR.correct), _hand_block_outputs(tiny, PAIR.incorrect)
    np.testing.assert_allclose(got, [_np_delta(a[-1], b[-1]) for a, b in zip(hc, hi)], rtol=1e-5, atol=1e-9)


def test_mean_nosink_drops_first_and_massive_tokens():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(2, 7, 8, generator=g, dtype=torch.float64)
    mask = torch.tensor([[1] * 7, [1] * 5 + [0] * 2])
    h[0, 3] *= 1000.0  # a massive-activation token in the middle of sequence 0
    h[1, 5:] = 1e6     # padding: must be ignored whatever its size
    got = pool(h, mask, "mean-nosink", 10.0)
    torch.testing.assert_close(got[0], h[0, [1, 2, 4, 5, 6]].mean(0))
    torch.testing.assert_close(got[1], h[1, 1:5].mean(0))
    torch.testing.assert_close(pool(h, mask, "mean")[0], h[0].mean(0))
    assert not torch.allclose(pool(h, mask, "mean")[0], got[0])
    # A larger multiple keeps the massive token (only the first token is dropped).
    torch.testing.assert_close(pool(h, mask, "mean-nosink", 1e5)[0], h[0, 1:].mean(0))


def test_mean_nosink_drops_an_injected_massive_token_in_the_model(tiny):
    """Blow up token 2 of every text at block 1's output; mean-nosink at layer 1 must ignore it."""
    def inject(_m, _a, out):
        out = out.clone()
        out[:, 2] *= 1e4
        return out

    handle = tiny.model.model.layers[1].register_forward_hook(inject)
    try:
        got = pair_deltas(tiny.model, tiny.tokenizer, [PAIR], "mean-nosink")["p"]
        hc, hi = _hand_block_outputs(tiny, PAIR.correct), _hand_block_outputs(tiny, PAIR.incorrect)
    finally:
        handle.remove()
    keep = lambda a: np.delete(a, [0, 2], axis=0).mean(0)  # noqa: E731
    assert got[1] == pytest.approx(_np_delta(keep(hc[1]), keep(hi[1])), rel=1e-5)
    plain = _np_delta(hc[1].mean(0), hi[1].mean(0))
    assert abs(plain - got[1]) > 10 * abs(got[1]) * 1e-5  # the plain mean is dominated by the injected token


@pytest.mark.parametrize("pooling", ["mean", "mean-nosink", "last"])
def test_score_is_the_same_alone_or_batched_with_longer_texts(tiny, pooling):
    alone = pair_deltas(tiny.model, tiny.tokenizer, [PAIR], pooling)["p"]
    other = MinimalPair("l2", "x", "y" * 90, "z" * 90)
    batched = pair_deltas(tiny.model, tiny.tokenizer, [LONG, PAIR, other], pooling)["p"]
    np.testing.assert_allclose(batched, alone, rtol=1e-5, atol=1e-9)


def test_scores_are_mean_over_domains_of_domain_means():
    pairs = [MinimalPair("a", "d1", "x", "y"), MinimalPair("b", "d1", "x", "z"), MinimalPair("c", "d2", "x", "w")]
    per_pair = {"a": [1.0, 0.0], "b": [3.0, 2.0], "c": [0.0, 4.0]}
    scores, per_domain = aggregate(pairs, per_pair)
    assert per_domain == {"d1": [2.0, 1.0], "d2": [0.0, 4.0]}
    assert scores == [1.0, 2.5]  # not the pair mean (4/3, 2)


def test_top_k_ties_go_to_the_lower_index():
    assert top_k_layers([0.1, 0.5, 0.5, 0.2, 0.5], 2) == [1, 2]
    assert top_k_layers([0.3, 0.1, 0.3, 0.3], 3) == [0, 2, 3]


def test_shipped_pairs_on_tiny_give_one_score_per_layer(tiny):
    pairs = load_pairs()
    per_pair = pair_deltas(tiny.model, tiny.tokenizer, pairs, "mean")
    scores, per_domain = aggregate(pairs, per_pair)
    assert set(per_domain) == {"code", "knowledge", "math"} and len(scores) == 4
    assert all(s > 0 for s in scores)


def test_unknown_pooling_is_a_user_error(tiny):
    with pytest.raises(UserError, match="--pooling 'max'"):
        pair_deltas(tiny.model, tiny.tokenizer, [PAIR], "max")


def test_embedding_reference_matches_hf_hidden_states_zero(tiny):
    """delta_emb against HF's own hidden_states[0] (the embedding output) of each unpadded text, pooled by hand."""
    from coloc_ray.probes.sensitivity import embedding_deltas, embedding_reference

    def h0(text):
        ids = torch.tensor([tiny.tokenizer(text)["input_ids"]])
        with torch.no_grad():
            return tiny.model(input_ids=ids, output_hidden_states=True).hidden_states[0][0].double().numpy()

    pairs = [PAIR, LONG]
    for pooling, red in (("mean", lambda a: a.mean(0)), ("last", lambda a: a[-1])):
        got = embedding_deltas(tiny.model, tiny.tokenizer, pairs, pooling)
        for p in pairs:
            want = _np_delta(red(h0(p.correct)), red(h0(p.incorrect)))
            assert want > 1e-6 or pooling == "last"  # these pairs end on the same token
            assert got[p.id] == pytest.approx(want, rel=1e-6, abs=1e-12)
    two_domains = [PAIR, MinimalPair("k", "knowledge", "Paris is in France.", "Paris is in Spain.")]
    ref = embedding_reference(two_domains, embedding_deltas(tiny.model, tiny.tokenizer, two_domains, "mean"))
    assert ref["score"] == pytest.approx(np.mean(list(ref["per_pair"].values())))  # one pair per domain


def test_run_sensitivity_carries_the_embedding_row(tiny):
    from coloc_ray.probes.api import run_sensitivity

    pairs = load_pairs(None)
    res = run_sensitivity(tiny, pairs=pairs, pooling="mean", top_k=2, num_workers=0)
    assert len(res["scores"]) == 4 and all(len(v) == 4 for v in res["per_pair"].values())
    emb = res["embedding"]
    assert set(emb["per_pair"]) == set(res["per_pair"])
    by_dom = {}
    for p in pairs:
        by_dom.setdefault(p.domain, []).append(emb["per_pair"][p.id])
    assert emb["score"] == pytest.approx(np.mean([np.mean(v) for v in by_dom.values()]))
    assert emb["score"] > 0
