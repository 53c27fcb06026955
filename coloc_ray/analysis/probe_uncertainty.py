"""Uncertainty of the sensitivity profile and of its top-k set S (METHOD 1, "Uncertainty").

A bootstrap over minimal pairs, stratified by domain (pairs are resampled within each domain, and S
stays the mean over domains of the domain means, as in the probe): each layer gets a 95 % percentile
band, each layer its probability of being in the top-k, and S its stability, the mean Jaccard index
of the resampled top-k sets with the chosen one. Fifteen pairs is few: a layer whose membership in S
hangs on which pairs were drawn is flagged before arms are trained on it.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Mapping, Sequence

import numpy as np

from coloc_ray.errors import UserError

#: S is called unstable below this mean Jaccard, or when a chosen layer is in fewer than half the resamples.
STABLE_JACCARD = 0.7
STABLE_MEMBERSHIP = 0.5


def top_k_rows(profiles: np.ndarray, k: int) -> np.ndarray:
    """Top-k layer indices of each row, ties to the lower index (a stable sort of -score)."""
    return np.argsort(-profiles, axis=1, kind="stable")[:, :k]


def sensitivity_bootstrap(per_pair: Mapping[str, Sequence[float]], pair_domains: Mapping[str, str] | None,
                          top_k: int, n_boot: int = 2000, seed: int = 0) -> dict:
    """Bands, top-k membership and stability of S from a domain-stratified bootstrap over pairs.

    Args:
        per_pair: ``{pair id: [delta_l for every layer]}`` (``sensitivity.json["per_pair"]``).
        pair_domains: ``{pair id: domain}``; None treats every pair as one domain.
        top_k: size of S.
        n_boot: resamples.
        seed: seed of the resampling.

    Returns:
        ``{n_boot, seed, scores, band_low, band_high, p_in_top_k, chosen, stability_jaccard,
        stable_layers, unstable_layers, unstable}`` (lists over layers where per layer).
    """
    if not per_pair:
        raise UserError("sensitivity bootstrap: no per-pair deltas (sensitivity.json has no 'per_pair')")
    groups: dict = defaultdict(list)
    for pid, row in per_pair.items():
        groups[(pair_domains or {}).get(pid, "all")].append(row)
    mats = [np.asarray(rows, dtype=np.float64) for _, rows in sorted(groups.items())]
    num_layers = mats[0].shape[1]
    if not 1 <= top_k <= num_layers:
        raise UserError(f"sensitivity bootstrap: top_k={top_k} with {num_layers} layers")
    rng = np.random.default_rng(seed)
    scores = np.mean([m.mean(axis=0) for m in mats], axis=0)
    boot = np.zeros((n_boot, num_layers))
    for m in mats:
        boot += m[rng.integers(0, m.shape[0], size=(n_boot, m.shape[0]))].mean(axis=1)
    boot /= len(mats)
    chosen = np.sort(top_k_rows(scores[None, :], top_k)[0])
    tops = top_k_rows(boot, top_k)
    member = np.zeros((n_boot, num_layers), dtype=bool)
    np.put_along_axis(member, tops, True, axis=1)
    p_in = member.mean(axis=0)
    inter = member[:, chosen].sum(axis=1)
    jaccard = float(np.mean(inter / (2 * top_k - inter)))
    low, high = np.percentile(boot, [2.5, 97.5], axis=0)
    unstable_layers = [int(i) for i in chosen if p_in[i] < STABLE_MEMBERSHIP]
    return {"n_boot": n_boot, "seed": seed, "scores": scores.tolist(), "band_low": low.tolist(),
            "band_high": high.tolist(), "p_in_top_k": p_in.tolist(), "chosen": chosen.tolist(),
            "stability_jaccard": jaccard, "stable_layers": [int(i) for i in chosen if p_in[i] >= 0.9],
            "unstable_layers": unstable_layers,
            "unstable": bool(jaccard < STABLE_JACCARD or unstable_layers)}


def describe(u: dict) -> str:
    """One sentence for a reader: how stable S is, and which of its layers are not."""
    s = (f"S is {'UNSTABLE' if u['unstable'] else 'stable'} under a bootstrap over pairs: mean Jaccard "
         f"{u['stability_jaccard']:.2f} with the chosen set ({u['n_boot']} resamples); layers in >= 90 % "
         f"of resampled top-k sets: {u['stable_layers'] or 'none'}")
    if u["unstable_layers"]:
        s += f"; chosen layers in fewer than half: {u['unstable_layers']}"
    return s + "."
