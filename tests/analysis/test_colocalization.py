"""Co-localization record: top-k, overlap null, depth control, errors; plus the figures."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from coloc_ray.analysis.colocalization import analyze, expected_overlap, overlap_p, top_k_layers
from coloc_ray.errors import UserError

REQUIRED = {"spearman_r", "spearman_p", "permutation_p", "top_k", "sensitive_layers", "rope_layers",
            "overlap", "expected_overlap", "overlap_p", "partial_r", "partial_p", "circular_shift_p",
            "num_layers"}


def test_top_k_ties_to_lower_index_sorted():
    assert top_k_layers([0.5, 0.9, 0.9, 0.1, 0.9], 2) == [1, 2]
    assert top_k_layers([3, 1, 2], 3) == [0, 1, 2]
    with pytest.raises(UserError, match="top_k=4"):
        top_k_layers([1, 2, 3], 4)
    with pytest.raises(UserError):
        top_k_layers([1, 2, 3], 0)


def test_paper_expected_overlap_and_hypergeometric():
    assert expected_overlap(10, 32) == pytest.approx(3.125)
    # Hand reference: P(X <= 1) = sum_{x<=1} C(10,x) C(22,10-x) / C(32,10).
    from math import comb

    ref = sum(comb(10, x) * comb(22, 10 - x) for x in (0, 1)) / comb(32, 10)
    assert overlap_p(1, 10, 32) == pytest.approx(ref, rel=1e-12)
    assert overlap_p(10, 10, 32) == pytest.approx(1.0)


def _paper_shaped(seed=0, n=32):
    rng = np.random.default_rng(seed)
    depth = np.arange(n, dtype=float)
    sens = np.exp(depth / 5 + rng.normal(0, 0.8, n))     # rises with depth, not monotone
    rope = np.exp(-depth / 6 + rng.normal(0, 0.8, n))    # largest early
    return sens, rope


def test_analyze_record_against_scipy():
    sens, rope = _paper_shaped()
    rec = analyze(sens, rope, top_k=10, n_perm=2000, seed=3)
    assert REQUIRED <= rec.keys()
    ref = stats.spearmanr(sens, rope)
    assert rec["spearman_r"] == pytest.approx(ref.statistic)
    assert rec["spearman_p"] == pytest.approx(ref.pvalue)
    assert rec["spearman_r"] < -0.8
    assert rec["permutation_p"] == pytest.approx(1 / 2001)  # no re-pairing reaches |r| ~ 0.85
    top_s = sorted(np.argsort(-sens, kind="stable")[:10].tolist())
    top_r = sorted(np.argsort(-rope, kind="stable")[:10].tolist())
    assert rec["sensitive_layers"] == top_s and rec["rope_layers"] == top_r
    assert rec["overlap"] == len(set(top_s) & set(top_r)) and rec["num_layers"] == 32
    assert rec["overlap_p"] == pytest.approx(stats.hypergeom(32, 10, 10).cdf(rec["overlap"]))
    # Both profiles are (noisy) monotone functions of depth: nothing is left given depth.
    assert rec["partial_p"] > 0.01
    assert abs(rec["partial_r"]) < 0.2
    assert "only without depth control" in rec["interpretation"]
    assert analyze(sens, rope, n_perm=500, seed=9) == analyze(sens, rope, n_perm=500, seed=9)


def test_analyze_survives_depth_control_when_relation_is_layerwise():
    rng = np.random.default_rng(7)
    noise = rng.normal(size=32)
    sens = noise + 0.02 * np.arange(32)
    rope = -noise + 0.1 * rng.normal(size=32)  # layer-by-layer anti-relation, no depth trend
    rec = analyze(sens, rope, top_k=8, n_perm=2000)
    assert rec["spearman_r"] < -0.9 and rec["partial_r"] < -0.9
    assert rec["circular_shift_p"] == pytest.approx(1 / 32)
    assert "survives depth control" in rec["interpretation"]


def test_partial_is_zero_when_a_profile_is_exactly_depth_ordered():
    sens = np.exp(np.arange(10.0))  # strictly rising: its ranks are the depth
    rope = np.random.default_rng(0).normal(size=10)
    rec = analyze(sens, rope, top_k=3, n_perm=100)
    assert (rec["partial_r"], rec["partial_p"]) == (0.0, 1.0)


@pytest.mark.parametrize("sens,rope,match", [
    ([1, 2, 3, 4, 5], [1, 2, 3, 4], "5 layers"),
    ([1, 2, float("nan"), 4], [1, 2, 3, 4], "non-finite"),
    ([1, 1, 1, 1], [1, 2, 3, 4], "constant"),
    ([1, 2, 3], [3, 2, 1], "at least 4"),
])
def test_analyze_errors(sens, rope, match):
    with pytest.raises(UserError, match=match):
        analyze(sens, rope, top_k=2, n_perm=10)


def test_analyze_k_larger_than_layers():
    with pytest.raises(UserError, match="top_k=11"):
        analyze(np.arange(10.0), -np.arange(10.0) ** 2, top_k=11)


def test_plots_write_pngs(tmp_path):
    from coloc_ray.analysis.plots import plot_profiles, plot_rank_scatter

    sens, rope = _paper_shaped()
    a = plot_profiles(sens, rope, list(range(22, 32)), [0, 1, 2, 3, 5, 6, 7, 9, 10, 22], tmp_path / "p.png", title="t")
    b = plot_rank_scatter(sens, rope, tmp_path / "r.png", spearman_r=-0.9)
    for p in (a, b):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000
