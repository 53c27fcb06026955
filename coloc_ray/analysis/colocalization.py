"""Co-localization of layer sensitivity S and RoPE influence I (METHOD 3).

``analyze(S, I)`` returns the ``analysis.json`` record: Spearman r (scipy p and a seeded
permutation p), the top-k overlap against its hypergeometric null, and the depth control
(partial Spearman given layer index, and its p under phase-randomized surrogates that keep each
profile's autocorrelation). Both profiles often trend with depth, which alone makes r negative; the
depth-controlled numbers say whether anything is left. The circular-shift p is kept for comparison
but is not a depth control (floor 1/L for two trending profiles). Interpolated layers (a RoPE probe
run on a ``layers`` subset) are left out of every statistic.
"""

from __future__ import annotations

from typing import Sequence

from coloc_ray.analysis.stats import (
    CI,
    as_profile,
    bootstrap_ci,
    circular_shift_p,
    depth_surrogate_p,
    empirical_p,
    paired_bootstrap_ci,
    partial_spearman,
    permutation_p,
    spearman,
)
from coloc_ray.errors import UserError

__all__ = ["CI", "analyze", "bootstrap_ci", "empirical_p", "expected_overlap", "interpret",
           "overlap_p", "paired_bootstrap_ci", "top_k_layers"]

#: Significance level used only for the one-sentence interpretation, never for a decision in code.
ALPHA = 0.05


def top_k_layers(scores: Sequence[float], k: int) -> list[int]:
    """The k highest-scoring layer indices (ties to the lower index), sorted ascending."""
    arr = as_profile(scores, "scores")
    if not 1 <= k <= arr.size:
        raise UserError(f"top_k={k} but the profile has {arr.size} layers; use 1 <= top_k <= {arr.size}")
    order = sorted(range(arr.size), key=lambda i: (-arr[i], i))
    return sorted(order[:k])


def expected_overlap(k: int, num_layers: int) -> float:
    """Mean overlap of two random k-subsets of L layers: k*k/L."""
    return k * k / num_layers


def overlap_p(overlap: int, k: int, num_layers: int) -> float:
    """P(X <= overlap) for X ~ hypergeometric(M=L, n=k, N=k): small when the sets avoid each other."""
    from scipy import stats

    return float(stats.hypergeom(M=num_layers, n=k, N=k).cdf(overlap))


def _check_pair(sens, rope) -> tuple:
    s = as_profile(sens, "sensitivity scores")
    r = as_profile(rope, "rope influence scores")
    if s.size != r.size:
        raise UserError(f"sensitivity has {s.size} layers but rope influence has {r.size}; "
                        "probe the same model")
    if s.size < 4:
        raise UserError(f"{s.size} layers: the depth-controlled correlation needs at least 4")
    for name, v in (("sensitivity", s), ("rope influence", r)):
        if float(v.max() - v.min()) == 0.0:
            raise UserError(f"{name} profile is constant across layers; correlation is undefined")
    return s, r


def analyze(sens: Sequence[float], rope: Sequence[float], top_k: int = 10, n_perm: int = 10000,
            seed: int = 0, exclude: Sequence[int] = (), n_surr: int = 2000) -> dict:
    """All co-localization statistics of two per-layer profiles (the ``analysis.json`` record).

    Args:
        sens: sensitivity S_l, one value per layer.
        rope: RoPE influence I_l, one value per layer.
        top_k: size of the top sets compared by overlap.
        n_perm: random re-pairings for ``permutation_p``.
        seed: seed of the permutation null and of the depth surrogates.
        exclude: layers left out of every statistic (the RoPE probe's interpolated layers). The
            sensitive set S is still the top-k of every layer (S is measured everywhere); the RoPE
            set and the overlap use measured layers only.
        n_surr: phase-randomized surrogates for ``depth_surrogate_p``.

    Returns:
        dict with spearman_r, spearman_p, permutation_p, top_k, sensitive_layers, rope_layers,
        overlap, expected_overlap, overlap_p, partial_r, partial_p, depth_surrogate_p,
        circular_shift_p, num_layers, measured_layers, excluded_layers, n_perm, n_surr, seed,
        interpretation.
    """
    if n_perm < 1:
        raise UserError(f"n_perm={n_perm}; use a positive number of permutations (e.g. 10000)")
    s_all, r_all = _check_pair(sens, rope)
    n = s_all.size
    keep = [i for i in range(n) if i not in set(exclude)]
    s, r = _check_pair(s_all[keep], r_all[keep]) if len(keep) < n else (s_all, r_all)
    sensitive = top_k_layers(s_all, top_k)
    rope_top = sorted(keep[i] for i in top_k_layers(r, top_k))
    overlap = len(set(sensitive) & set(rope_top) & set(keep))
    rho, p = spearman(s, r)
    partial_r, partial_p = partial_spearman(s, r, z=keep)
    out = {
        "spearman_r": rho,
        "spearman_p": p,
        "permutation_p": permutation_p(s, r, n_perm=n_perm, seed=seed),
        "top_k": top_k,
        "sensitive_layers": sensitive,
        "rope_layers": rope_top,
        "overlap": overlap,
        "expected_overlap": expected_overlap(top_k, len(keep)),
        "overlap_p": overlap_p(overlap, top_k, len(keep)),
        "partial_r": partial_r,
        "partial_p": partial_p,
        "depth_surrogate_p": depth_surrogate_p(s, r, n_surr=n_surr, seed=seed),
        "circular_shift_p": circular_shift_p(s, r),
        "num_layers": n,
        "measured_layers": len(keep),
        "excluded_layers": sorted(set(range(n)) - set(keep)),
        "n_perm": n_perm,
        "n_surr": n_surr,
        "seed": seed,
    }
    out["interpretation"] = interpret(out)
    return out


def interpret(a: dict) -> str:
    """One sentence on what the numbers support, with and without depth control (METHOD 3)."""
    sign = "anti-" if a["spearman_r"] < 0 else ""
    raw = a["spearman_p"] < ALPHA and a["permutation_p"] < ALPHA
    depth_p = a.get("depth_surrogate_p", a["partial_p"])  # records written before the surrogate null
    depth = a["partial_p"] < ALPHA and depth_p < ALPHA
    head = (f"Spearman r = {a['spearman_r']:+.3f} (p = {a['spearman_p']:.2g}, permutation p = "
            f"{a['permutation_p']:.2g}); top-{a['top_k']} overlap {a['overlap']} vs "
            f"{a['expected_overlap']:.3g} expected (P(X <= o) = {a['overlap_p']:.2g}). ")
    ctrl = (f"Given depth: partial r = {a['partial_r']:+.3f} (t p = {a['partial_p']:.2g}, depth-surrogate p = "
            f"{depth_p:.2g}, phase-randomized, keeps autocorrelation). ")
    if raw and depth:
        verdict = f"The {sign}localization survives depth control."
    elif raw:
        verdict = (f"The {sign}localization holds only without depth control: it may be a shared "
                   "trend with depth, not a layer-by-layer relation.")
    elif depth:
        verdict = "No raw rank correlation, but a depth-controlled one: read with care."
    else:
        verdict = "No significant co-localization either way."
    return head + ctrl + verdict
