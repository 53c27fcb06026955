"""Layer sets: S / R disjoint, R reproducible per seed and uniform, the trial plan maps arms to sets."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from coloc_ray.ablation.arms import ARMS, get_arm
from coloc_ray.ablation.layersets import build_layer_sets, draw_random_set, plan_trials
from coloc_ray.errors import UserError


def test_r_disjoint_sorted_reproducible():
    S = [20, 21, 22, 23, 24, 25, 26, 27, 28, 29]
    a = build_layer_sets(30, 10, S, [123, 124, 7])
    b = build_layer_sets(30, 10, list(reversed(S)), [123, 124, 7])
    assert a == b  # same seeds, same sets, whatever order S came in
    for seed, R in a["R"].items():
        assert len(R) == 10 and len(set(R)) == 10 and R == sorted(R)
        assert not set(R) & set(S)
        assert all(0 <= x < 20 for x in R)
    assert a["R"]["123"] != a["R"]["124"]
    # independent reference: the rule written out by hand
    rng = random.Random(123)
    assert a["R"]["123"] == sorted(rng.sample(list(range(20)), 10))


def test_r_is_uniform_over_the_complement():
    # each of the 6 non-S layers should be drawn with probability k / 6 = 1/3
    counts = Counter()
    n = 3000
    for seed in range(n):
        counts.update(draw_random_set(8, [0, 1], 2, seed))
    assert set(counts) == set(range(2, 8))
    for layer in range(2, 8):
        assert abs(counts[layer] / n - 1 / 3) < 0.04, counts


def test_needs_l_at_least_2k():
    with pytest.raises(UserError, match="needs L >= 2k"):
        build_layer_sets(5, 3, [0, 1, 2], [123])
    assert len(build_layer_sets(6, 3, [0, 1, 2], [123])["R"]["123"]) == 3


def test_s_must_have_k_distinct_layers():
    with pytest.raises(UserError):
        build_layer_sets(10, 3, [1, 1, 2], [1])


def test_plan_maps_arms_to_sets_and_runs_s_only_arms_once():
    sets = build_layer_sets(8, 2, [6, 7], [123, 124], rope=[0, 1])
    trials = plan_trials(["A", "B", "C", "D", "base", "lora_only_S", "garfa_only_S", "rope_topk", "all_layers"],
                         sets, [123, 124], [0, 1])
    by = Counter(t.arm for t in trials)
    # R arms: 2 control x 2 train seeds; the others once per training seed; base is not a trial
    assert by == {"A": 2, "B": 4, "C": 4, "D": 4, "lora_only_S": 2, "garfa_only_S": 2, "rope_topk": 2,
                  "all_layers": 2}
    assert len({t.trial_id for t in trials}) == len(trials)
    S = [6, 7]
    for t in trials:
        R = sets["R"][str(t.control_seed)] if t.control_seed is not None else None
        want = {"A": (S, S), "B": (S, R), "C": (R, S), "D": (R, R), "lora_only_S": (S, []),
                "garfa_only_S": ([], S), "rope_topk": ([0, 1], [0, 1]), "all_layers": (list(range(8)),) * 2}
        assert (t.lora_layers, t.garfa_layers) == tuple(want[t.arm]), t
        assert (t.control_seed is None) == (not ARMS[t.arm].uses_r)


def test_unknown_arm_lists_valid():
    with pytest.raises(UserError, match="valid arms: A, B, C, D"):
        get_arm("E")
