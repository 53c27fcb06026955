"""Uncertainty of the sensitivity profile and of its top-k set S (METHOD 1, "Uncertainty").

A bootstrap over minimal pairs, stratified by domain (pairs are resampled within each domain, and S
stays the mean over domains of the domain means, as in the probe): each layer gets a 95 % percentile
band, each layer its probability of being in the top-k, and S its stability, the mean Jaccard index
of the resampled top-k sets with the chosen one. Fifteen pairs is few: a layer whose membership in S
hangs on which pairs were drawn is flagged before arms are trained on it.

The RoPE-influence profile gets the same from a bootstrap over eval texts (``rope_bootstrap``), on the
per-text loss sums the probe keeps; its interpolated layers stay out.
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


def rope_bootstrap(per_text: Mapping, num_layers: int, top_k: int, n_boot: int = 2000, seed: int = 0) -> dict:
    """Bands, top-k membership and stability of the RoPE top-k from a bootstrap over eval texts.

    A resample draws N texts with replacement; every loss is recomputed as (sum of the drawn texts' CE
    sums) / (sum of their target counts), as the probe does, and I_l = mean over f of |L_{l,f} - L_base|.
    Only probed layers enter (the probe's ``per_text`` has no interpolated layer); the others get None.

    Args:
        per_text: ``rope_influence.json["per_text"]``: ``{base: [N], num_tokens: [N], losses: {factor:
            {layer: [N]}}}``.
        num_layers: L.
        top_k: size of the RoPE top-k (capped at the number of probed layers).
        n_boot, seed: resamples and their seed.

    Returns:
        ``{n_boot, seed, layers (probed), scores, band_low, band_high, p_in_top_k, chosen, stability_jaccard,
        stable_layers, unstable_layers, unstable}``; per-layer lists have L entries (None where not probed).
    """
    try:
        base = np.asarray(per_text["base"], dtype=np.float64)
        counts = np.asarray(per_text["num_tokens"], dtype=np.float64)
        facs = list(per_text["losses"])
        layers = sorted(int(l) for l in per_text["losses"][facs[0]])
        sums = np.asarray([[per_text["losses"][f][str(l)] for l in layers] for f in facs], dtype=np.float64)
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise UserError(f"rope bootstrap: malformed per_text record ({e}); re-run the RoPE probe") from None
    n = base.size
    if n < 2 or sums.shape[2] != n or counts.size != n:
        raise UserError(f"rope bootstrap: needs per-text sums of 2 or more texts (got {n})")
    k = min(top_k, len(layers))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    weights = np.zeros((n_boot, n))
    np.add.at(weights, (np.arange(n_boot)[:, None], idx), 1.0)  # how often each text was drawn

    def influence(w: np.ndarray) -> np.ndarray:  # w [B, N] -> I [B, len(layers)]
        tok = w @ counts
        lb = (w @ base) / tok
        lf = np.einsum("bn,fln->bfl", w, sums) / tok[:, None, None]
        return np.abs(lf - lb[:, None, None]).mean(axis=1)

    scores = influence(np.ones((1, n)))[0]
    boot = influence(weights)
    stats = _top_k_stats(scores, boot, k)
    full = lambda v: [None] * num_layers if v is None else _scatter(v, layers, num_layers)  # noqa: E731
    low, high = np.percentile(boot, [2.5, 97.5], axis=0)
    to_layer = lambda ix: [layers[i] for i in ix]  # noqa: E731
    return {"n_boot": n_boot, "seed": seed, "layers": layers, "scores": full(scores), "band_low": full(low),
            "band_high": full(high), "p_in_top_k": full(stats["p_in"]), "chosen": to_layer(stats["chosen"]),
            "stability_jaccard": stats["jaccard"], "stable_layers": to_layer(stats["stable"]),
            "unstable_layers": to_layer(stats["unstable"]),
            "unstable": bool(stats["jaccard"] < STABLE_JACCARD or stats["unstable"])}


def _scatter(values, layers, num_layers) -> list:
    out: list = [None] * num_layers
    for l, v in zip(layers, values):
        out[l] = float(v)
    return out


def _top_k_stats(scores: np.ndarray, boot: np.ndarray, k: int) -> dict:
    """Chosen top-k (indices into the columns), P(in top-k) per column, mean Jaccard with the chosen set."""
    chosen = np.sort(top_k_rows(scores[None, :], k)[0])
    member = np.zeros(boot.shape, dtype=bool)
    np.put_along_axis(member, top_k_rows(boot, k), True, axis=1)
    p_in = member.mean(axis=0)
    inter = member[:, chosen].sum(axis=1)
    return {"chosen": [int(i) for i in chosen], "p_in": p_in, "jaccard": float(np.mean(inter / (2 * k - inter))),
            "stable": [int(i) for i in chosen if p_in[i] >= 0.9],
            "unstable": [int(i) for i in chosen if p_in[i] < STABLE_MEMBERSHIP]}


def describe_rope(u: dict) -> str:
    """One sentence: how stable the RoPE top-k is under a bootstrap over texts."""
    return _describe(u, f"The RoPE top-{len(u['chosen'])}", "texts",
                     f"({u['n_boot']} resamples, {len(u['layers'])} probed layers)")


def describe(u: dict) -> str:
    """One sentence for a reader: how stable S is, and which of its layers are not."""
    return _describe(u, "S", "pairs", f"with the chosen set ({u['n_boot']} resamples)")


def _describe(u: dict, what: str, over: str, detail: str) -> str:
    s = (f"{what} is {'UNSTABLE' if u['unstable'] else 'stable'} under a bootstrap over {over}: mean Jaccard "
         f"{u['stability_jaccard']:.2f} {detail}; layers in >= 90 % of resampled top-k sets: "
         f"{u['stable_layers'] or 'none'}")
    if u["unstable_layers"]:
        s += f"; chosen layers in fewer than half: {u['unstable_layers']}"
    return s + "."
