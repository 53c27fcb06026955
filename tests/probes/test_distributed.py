"""The probes on a real local Ray: 1 worker, 2 workers and no Ray give the same numbers."""

from __future__ import annotations

import numpy as np
import pytest

from coloc_ray.probes.api import run_rope_influence, run_sensitivity
from coloc_ray.probes.distributed import split_even, split_layers_by_cost

TEXTS = ["def add(a, b):\n    return a + b\n" * 3, "Question: 2 + 2?\nAnswer: 4\n" * 6, "short text here"]


def test_shards_cover_everything_once():
    assert split_even(list(range(15)), 2) == [list(range(8)), list(range(8, 15))]
    assert split_even([1, 2], 5) == [[1], [2]]
    shards = split_layers_by_cost(range(30), 3, 30, naive=False)
    assert sorted(sum(shards, [])) == list(range(30))
    loads = [sum(30 - l + 4 for l in s) for s in shards]
    assert max(loads) - min(loads) <= 34  # balanced to within one layer's cost


@pytest.mark.ray
def test_sensitivity_same_with_1_and_2_workers(ray_local):
    local = run_sensitivity("tiny-gqa", pooling="mean-nosink", top_k=2, num_workers=0)
    one = run_sensitivity("tiny-gqa", pooling="mean-nosink", top_k=2, num_workers=1)
    two = run_sensitivity("tiny-gqa", pooling="mean-nosink", top_k=2, num_workers=2)
    assert one["num_workers"] == 1 and two["num_workers"] == 2
    assert list(two["per_pair"]) == list(local["per_pair"])
    for res in (one, two):
        np.testing.assert_allclose(res["scores"], local["scores"], rtol=1e-6)
        for pid, row in local["per_pair"].items():
            np.testing.assert_allclose(res["per_pair"][pid], row, rtol=1e-5, atol=1e-10)
        # the embedding reference row comes back from the same tasks, equal to the in-process one
        assert list(res["embedding"]["per_pair"]) == list(local["embedding"]["per_pair"])
        for pid, v in local["embedding"]["per_pair"].items():
            assert res["embedding"]["per_pair"][pid] == pytest.approx(v, rel=1e-6, abs=1e-12)
        assert res["embedding"]["score"] == pytest.approx(local["embedding"]["score"], rel=1e-6)
    assert local["embedding"]["score"] > 0
    assert one["top_layers"] == two["top_layers"] == local["top_layers"]


@pytest.mark.ray
def test_rope_same_with_1_and_2_workers(ray_local):
    kw = dict(eval_data=TEXTS, factors=[2.0, 0.5], max_len=64)
    local = run_rope_influence("tiny-gqa", num_workers=0, **kw)
    one = run_rope_influence("tiny-gqa", num_workers=1, **kw)
    two = run_rope_influence("tiny-gqa", num_workers=2, **kw)
    assert min(local["scores"]) > 0
    for res in (one, two):
        assert res["base_loss"] == pytest.approx(local["base_loss"], rel=1e-6)
        np.testing.assert_allclose(res["scores"], local["scores"], rtol=1e-4)
        for key, row in local["losses"].items():
            np.testing.assert_allclose(res["losses"][key], row, rtol=1e-6)
        # per-text sums (the bootstrap's input) come back from the layer shards, every probed layer once
        pt, lpt = res["per_text"], local["per_text"]
        np.testing.assert_allclose(pt["base"], lpt["base"], rtol=1e-6)
        assert pt["num_tokens"] == lpt["num_tokens"]
        for key, by_layer in lpt["losses"].items():
            assert sorted(pt["losses"][key], key=int) == sorted(by_layer, key=int)
            for l, row in by_layer.items():
                np.testing.assert_allclose(pt["losses"][key][l], row, rtol=1e-6)
