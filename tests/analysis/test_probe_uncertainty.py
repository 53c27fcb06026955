"""Bootstrap of the sensitivity profile over pairs, against a naive loop and known truths."""

from __future__ import annotations

import numpy as np
import pytest

from coloc_ray.analysis.probe_uncertainty import describe, sensitivity_bootstrap


def _probe(rng, n_layers=12, per_domain=5, noise=0.05, sep=1.0):
    truth = np.linspace(0, sep, n_layers)
    per_pair, domains = {}, {}
    for d in ("code", "knowledge", "math"):
        for j in range(per_domain):
            per_pair[f"{d}{j}"] = (truth + rng.normal(0, noise, n_layers)).tolist()
            domains[f"{d}{j}"] = d
    return per_pair, domains


def test_bootstrap_against_naive_loop():
    rng = np.random.default_rng(0)
    per_pair, domains = _probe(rng, noise=0.3)
    u = sensitivity_bootstrap(per_pair, domains, top_k=4, n_boot=300, seed=5)
    # the same draws, by loops: resample within each domain (sorted domain order), mean of domain means
    rng2 = np.random.default_rng(5)
    by_dom = {d: np.array([per_pair[p] for p in per_pair if domains[p] == d]) for d in sorted(set(domains.values()))}
    draws = {d: rng2.integers(0, m.shape[0], size=(300, m.shape[0])) for d, m in by_dom.items()}
    boots, jac, member = [], [], np.zeros(12)
    chosen = set(u["chosen"])
    for b in range(300):
        s = np.mean([by_dom[d][draws[d][b]].mean(axis=0) for d in by_dom], axis=0)
        top = set(sorted(range(12), key=lambda i: (-s[i], i))[:4])
        jac.append(len(top & chosen) / len(top | chosen))
        for i in top:
            member[i] += 1
        boots.append(s)
    boots = np.array(boots)
    assert u["band_low"] == pytest.approx(np.percentile(boots, 2.5, axis=0))
    assert u["band_high"] == pytest.approx(np.percentile(boots, 97.5, axis=0))
    assert u["p_in_top_k"] == pytest.approx(member / 300)
    assert u["stability_jaccard"] == pytest.approx(np.mean(jac))
    point = np.mean([m.mean(axis=0) for m in by_dom.values()], axis=0)
    assert u["scores"] == pytest.approx(point)
    assert u["chosen"] == sorted(sorted(range(12), key=lambda i: (-point[i], i))[:4])


def test_clear_profile_is_stable_and_flat_profile_is_flagged():
    rng = np.random.default_rng(1)
    clear = sensitivity_bootstrap(*_probe(rng, noise=0.01), top_k=4, n_boot=500)
    assert not clear["unstable"] and clear["stability_jaccard"] == pytest.approx(1.0)
    assert clear["stable_layers"] == [8, 9, 10, 11]
    flat = sensitivity_bootstrap(*_probe(rng, noise=0.5, sep=0.0), top_k=4, n_boot=500)
    assert flat["unstable"] and flat["stability_jaccard"] < 0.7
    assert "UNSTABLE" in describe(flat)
