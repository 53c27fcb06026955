"""The depth null (METHOD 3): phase-randomized surrogates, calibrated by simulation.

Independent profiles that both trend with depth and have autocorrelated wiggles (AR(1), phi 0.6) are
what a probe pair looks like when nothing co-localizes beyond depth. The depth-surrogate p must fall
below 0.05 in about 5 % of them; the circular shift (floor 1/L) is shown not to be a depth control.
"""

from __future__ import annotations

import numpy as np
import pytest

from coloc_ray.analysis import stats as cs

L = 30


def _ar1(rng, phi=0.6, n=L):
    e = rng.normal(size=n)
    out = np.empty(n)
    out[0] = e[0] / np.sqrt(1 - phi ** 2)
    for i in range(1, n):
        out[i] = phi * out[i - 1] + e[i]
    return out


def _pair(rng, coupling=0.0):
    depth = np.arange(L) / L
    shared = _ar1(rng)
    s = 4 * depth + _ar1(rng) + coupling * shared
    i = -4 * depth + _ar1(rng) - coupling * shared
    return s, i


def test_phase_surrogates_keep_the_amplitude_spectrum():
    rng = np.random.default_rng(0)
    x = _ar1(rng) + np.arange(L) / 5
    surr = cs.phase_surrogates(x, 50, rng)
    ref = np.abs(np.fft.rfft(x - x.mean()))
    for s in surr:
        assert np.abs(np.fft.rfft(s - s.mean())) == pytest.approx(ref, rel=1e-9, abs=1e-9)
        assert s.mean() == pytest.approx(x.mean())
    assert not np.allclose(surr[0], x)


def test_depth_surrogate_p_is_calibrated_on_independent_trending_profiles():
    rng = np.random.default_rng(1)
    n_sims, hits, shift = 300, 0, 0
    for k in range(n_sims):
        s, i = _pair(rng)
        hits += cs.depth_surrogate_p(s, i, n_surr=399, seed=k) < 0.05
        shift += cs.circular_shift_p(s, i) < 0.05
    # Measured: surrogate 6 %, t-based partial p 13 %, circular shift 31 %, raw Spearman 69 %.
    assert 0.02 <= hits / n_sims <= 0.09, hits / n_sims
    # The circular shift calls many of these independent trending pairs "aligned": not a depth control.
    assert shift / n_sims > 0.2


def test_depth_surrogate_p_finds_a_layer_by_layer_relation():
    rng = np.random.default_rng(2)
    hits = sum(cs.depth_surrogate_p(*_pair(rng, coupling=3.0), n_surr=399, seed=k) < 0.05 for k in range(60))
    assert hits / 60 >= 0.6


def test_depth_surrogate_p_is_one_for_a_pure_depth_order():
    x = np.arange(12.0)
    assert cs.depth_surrogate_p(x, np.sin(x)) == 1.0


def test_interpolated_layers_are_left_out_of_every_statistic():
    from scipy import stats

    from coloc_ray.analysis.colocalization import analyze, top_k_layers

    rng = np.random.default_rng(4)
    s, i = _pair(rng)
    i[[3, 4, 10]] = 99.0  # interpolated values that would top the RoPE ranking if counted
    keep = [k for k in range(L) if k not in (3, 4, 10)]
    rec = analyze(s, i, top_k=5, n_perm=200, exclude=[3, 4, 10])
    assert rec["spearman_r"] == pytest.approx(stats.spearmanr(s[keep], i[keep]).statistic)
    assert rec["excluded_layers"] == [3, 4, 10] and rec["measured_layers"] == len(keep)
    assert rec["rope_layers"] == sorted(keep[k] for k in top_k_layers(i[keep], 5))
    assert not {3, 4, 10} & set(rec["rope_layers"])
    assert rec["sensitive_layers"] == top_k_layers(s, 5)  # S is measured at every layer
    assert rec["expected_overlap"] == pytest.approx(25 / len(keep))
    assert 0 < rec["depth_surrogate_p"] <= 1 and "depth-surrogate p" in rec["interpretation"]
