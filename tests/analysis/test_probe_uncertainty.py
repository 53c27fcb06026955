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


def _records(rng, n_layers=12):
    per_pair, domains = _probe(rng, n_layers=n_layers, noise=0.2)
    scores = np.mean([np.mean([per_pair[p] for p in per_pair if domains[p] == d], axis=0)
                      for d in sorted(set(domains.values()))], axis=0)
    sens = {"model": "m", "num_layers": n_layers, "scores": scores.tolist(), "per_pair": per_pair,
            "pair_domains": domains, "top_k": 4,
            "embedding": {"score": float(scores[3]) + 1e-9, "per_pair": {p: 0.1 for p in per_pair}}}
    rope = {"model": "m", "num_layers": n_layers, "scores": rng.uniform(0, 1, n_layers).tolist(),
            "interpolated": [False] * n_layers}
    return sens, rope


def test_analysis_and_report_carry_the_embedding_reference(tmp_path):
    from coloc_ray.analysis.run import run_analysis
    from coloc_ray.report.build import _md_coloc

    sens, rope = _records(np.random.default_rng(3))
    res = run_analysis(sens, rope, top_k=4, out_dir=tmp_path, n_perm=200)
    ref = res["embedding_reference"]
    s = np.asarray(sens["scores"])
    assert ref["score"] == sens["embedding"]["score"]
    assert ref["layers_at_or_below"] == [i for i in range(12) if s[i] <= s[3] + 1e-9] and 3 in ref["layers_at_or_below"]
    assert (tmp_path / "profiles.png").read_bytes()[:4] == b"\x89PNG"
    md = "\n".join(_md_coloc({"colocalization": res, "figures": []}))
    assert f"| {ref['score']:.4g} ({ref['layers_at_or_below']}) |" in md and "embedding-output distance" in md
    # a record from before the embedding row: no row, no error
    old = {k: v for k, v in sens.items() if k != "embedding"}
    res_old = run_analysis(old, rope, top_k=4, out_dir=tmp_path / "old", n_perm=200)
    assert "embedding_reference" not in res_old
    assert "embedding-output" not in "\n".join(_md_coloc({"colocalization": res_old, "figures": []}))


def _per_text(rng, n_texts=16, probed=(0, 1, 2, 4, 5, 6, 7), noise=0.02, sep=0.5, factors=("2.0", "0.5")):
    """Synthetic per-text CE sums: layer l moves the loss by sep * l / 7 (plus per-text noise)."""
    counts = rng.integers(20, 200, n_texts)
    base_mean = rng.uniform(2.0, 3.0, n_texts)
    pt = {"base": (base_mean * counts).tolist(), "num_tokens": counts.tolist(), "losses": {}}
    for f in factors:
        pt["losses"][f] = {str(l): ((base_mean + sep * l / 7 + rng.normal(0, noise, n_texts)) * counts).tolist()
                           for l in probed}
    return pt


def test_rope_bootstrap_against_direct_numpy_loop():
    from coloc_ray.analysis.probe_uncertainty import rope_bootstrap

    rng = np.random.default_rng(0)
    pt = _per_text(rng, noise=0.3, sep=0.05)
    u = rope_bootstrap(pt, num_layers=8, top_k=3, n_boot=300, seed=7)
    probed = [0, 1, 2, 4, 5, 6, 7]  # layer 3 was interpolated: it has no per-text sums
    base, cnt = np.array(pt["base"]), np.array(pt["num_tokens"])

    def infl(ix):
        lb = base[ix].sum() / cnt[ix].sum()
        return np.array([np.mean([abs(np.sum(np.array(pt["losses"][f][str(l)])[ix]) / cnt[ix].sum() - lb)
                                  for f in ("2.0", "0.5")]) for l in probed])

    point = infl(np.arange(16))
    draws = np.random.default_rng(7).integers(0, 16, size=(300, 16))
    boots = np.array([infl(d) for d in draws])
    chosen = sorted(sorted(range(7), key=lambda i: (-point[i], i))[:3])
    member, jac = np.zeros(7), []
    for s in boots:
        top = set(sorted(range(7), key=lambda i: (-s[i], i))[:3])
        jac.append(len(top & set(chosen)) / len(top | set(chosen)))
        for i in top:
            member[i] += 1
    assert u["layers"] == probed and u["chosen"] == [probed[i] for i in chosen]
    for key, want in (("scores", point), ("band_low", np.percentile(boots, 2.5, axis=0)),
                      ("band_high", np.percentile(boots, 97.5, axis=0)), ("p_in_top_k", member / 300)):
        assert u[key][3] is None, key  # the interpolated layer stays out
        assert [u[key][l] for l in probed] == pytest.approx(want, rel=1e-10, abs=1e-12), key
    assert u["stability_jaccard"] == pytest.approx(np.mean(jac))


def test_rope_bootstrap_clear_is_stable_flat_is_flagged():
    from coloc_ray.analysis.probe_uncertainty import describe_rope, rope_bootstrap

    rng = np.random.default_rng(2)
    clear = rope_bootstrap(_per_text(rng, noise=0.001, sep=0.5), num_layers=8, top_k=3, n_boot=400)
    assert clear["chosen"] == [5, 6, 7] and clear["stable_layers"] == [5, 6, 7] and not clear["unstable"]
    flat = rope_bootstrap(_per_text(rng, noise=0.3, sep=0.0), num_layers=8, top_k=3, n_boot=400)
    assert flat["unstable"] and "UNSTABLE" in describe_rope(flat)


def test_analysis_and_report_carry_the_rope_band(tmp_path):
    from coloc_ray.analysis.probe_uncertainty import rope_bootstrap
    from coloc_ray.analysis.run import run_analysis
    from coloc_ray.report.build import _md_coloc

    rng = np.random.default_rng(4)
    sens, rope = _records(rng, n_layers=8)
    rope["per_text"] = _per_text(rng)
    rope["interpolated"] = [l == 3 for l in range(8)]
    res = run_analysis(sens, rope, top_k=3, out_dir=tmp_path, n_perm=200)
    ru = res["rope_uncertainty"]
    assert ru == rope_bootstrap(rope["per_text"], 8, 3)
    assert (tmp_path / "profiles.png").read_bytes()[:4] == b"\x89PNG"
    md = "\n".join(_md_coloc({"colocalization": res, "figures": []}))
    assert "under a bootstrap over texts" in md and f"{ru['chosen'][0]}: {ru['p_in_top_k'][ru['chosen'][0]]:.2f}" in md
