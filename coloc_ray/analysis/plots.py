"""Figures of the two probe profiles (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

SENS_COLOR, ROPE_COLOR = "#c0392b", "#2471a3"


def pyplot():
    """matplotlib.pyplot on the Agg backend (imported lazily: matplotlib is slow to import)."""
    import matplotlib

    matplotlib.use("Agg")  # headless: workers and CI have no display
    import matplotlib.pyplot as plt

    return plt


def _minmax(v: Sequence[float]) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64)
    span = a.max() - a.min()
    return (a - a.min()) / span if span > 0 else np.zeros_like(a)


def plot_profiles(sens: Sequence[float], rope: Sequence[float], sensitive_layers: Sequence[int],
                  rope_layers: Sequence[int], path: str | Path, title: str = "",
                  sens_band: tuple[Sequence[float], Sequence[float]] | None = None,
                  rope_interpolated: Sequence[int] = (), sens_reference: float | None = None,
                  rope_band: tuple[Sequence[float], Sequence[float]] | None = None) -> Path:
    """Both profiles against depth, each min-max normalized, with their top-k layers marked.

    Args:
        sens: sensitivity S_l per layer.
        rope: RoPE influence I_l per layer.
        sensitive_layers: top-k of S (filled markers on the S curve).
        rope_layers: top-k of I (filled markers on the I curve).
        path: PNG to write.
        title: optional first line of the title.
        sens_band: (low, high) per layer of S (bootstrap over pairs), drawn as a shaded band on the
            same normalization as S.
        rope_interpolated: layers whose I was interpolated, not measured (hollow markers).
        sens_reference: the embedding-output distance S_emb (sensitivity.json ``embedding.score``), drawn as
            a horizontal line on S's normalization: the part of S that is token identity alone.
        rope_band: (low, high) per layer of I (bootstrap over texts), shaded on I's normalization.

    Returns:
        The written path.
    """
    plt = pyplot()
    s, r = _minmax(sens), _minmax(rope)
    layers = np.arange(s.size)
    fig, ax = plt.subplots(figsize=(9, 4.2), dpi=120)
    ax.plot(layers, s, "-", color=SENS_COLOR, lw=1.6, label="sensitivity S (normalized)")
    if sens_band is not None:
        raw = np.asarray(sens, dtype=np.float64)
        lo, span = raw.min(), (raw.max() - raw.min()) or 1.0
        ax.fill_between(layers, (np.asarray(sens_band[0]) - lo) / span, (np.asarray(sens_band[1]) - lo) / span,
                        color=SENS_COLOR, alpha=0.18, lw=0, label="S 95 % band (bootstrap over pairs)")
    lo_y, hi_y = -0.05, 1.12
    if sens_reference is not None:
        raw = np.asarray(sens, dtype=np.float64)
        y = (float(sens_reference) - raw.min()) / ((raw.max() - raw.min()) or 1.0)
        ax.axhline(y, color=SENS_COLOR, ls="--", lw=1, alpha=0.8, label="embedding output (S scale)")
        lo_y, hi_y = min(lo_y, y - 0.05), max(hi_y, y + 0.08)
    ax.plot(layers, r, "-", color=ROPE_COLOR, lw=1.6, label="RoPE influence I (normalized)")
    if rope_band is not None:
        raw = np.asarray(rope, dtype=np.float64)
        lo, span = raw.min(), (raw.max() - raw.min()) or 1.0
        ax.fill_between(layers, (np.asarray(rope_band[0]) - lo) / span, (np.asarray(rope_band[1]) - lo) / span,
                        color=ROPE_COLOR, alpha=0.15, lw=0, label="I 95 % band (bootstrap over texts)")
    if len(rope_interpolated):
        ri = list(rope_interpolated)
        ax.scatter(ri, r[ri], s=30, facecolors="white", edgecolors=ROPE_COLOR, zorder=4, label="I interpolated")
    ks, kr = list(sensitive_layers), list(rope_layers)
    ax.scatter(ks, s[ks], s=46, color=SENS_COLOR, zorder=3, label=f"top-{len(ks)} S")
    ax.scatter(kr, r[kr], s=46, marker="s", color=ROPE_COLOR, zorder=3, label=f"top-{len(kr)} I")
    both = sorted(set(ks) & set(kr))
    for layer in both:  # shared layers (the co-localized ones): a dotted line so they stand out
        ax.axvline(layer, color="0.6", ls=":", lw=1)
    ax.set_xlabel("layer (depth)")
    ax.set_ylabel("min-max normalized score")
    ax.set_xlim(-0.5, s.size - 0.5)
    bands = sens_band is not None or rope_band is not None
    ax.set_ylim(lo_y if not bands else min(lo_y, float(ax.get_ylim()[0])),
                hi_y if not bands else max(hi_y, float(ax.get_ylim()[1])))
    step = max(1, s.size // 16)
    ax.set_xticks(layers[::step])
    ax.grid(alpha=0.25)
    sub = f"overlap of top sets: {both if both else 'none'}"
    ax.set_title(f"{title}\n{sub}" if title else sub, fontsize=10)
    ax.legend(loc="upper center", ncol=4, fontsize=8, frameon=False, bbox_to_anchor=(0.5, -0.14))
    return save_figure(fig, plt, path)


def plot_rank_scatter(sens: Sequence[float], rope: Sequence[float], path: str | Path,
                      spearman_r: float | None = None, title: str = "") -> Path:
    """Rank of S against rank of I, one labelled point per layer (rank 1 = highest score)."""
    from scipy import stats

    plt = pyplot()
    s = np.asarray(sens, dtype=np.float64)
    r = np.asarray(rope, dtype=np.float64)
    rs = stats.rankdata(-s, method="min")
    rr = stats.rankdata(-r, method="min")
    n = s.size
    fig, ax = plt.subplots(figsize=(5.6, 5.4), dpi=120)
    sc = ax.scatter(rs, rr, c=np.arange(n), cmap="viridis", s=40, zorder=3)
    for layer in range(n):
        ax.annotate(str(layer), (rs[layer], rr[layer]), textcoords="offset points", xytext=(4, 3),
                    fontsize=7, color="0.25")
    ax.plot([1, n], [1, n], color="0.7", lw=1, ls="--")
    ax.set_xlabel("sensitivity rank (1 = most sensitive)")
    ax.set_ylabel("RoPE-influence rank (1 = most influential)")
    ax.set_xlim(0, n + 1)
    ax.set_ylim(0, n + 1)
    ax.set_aspect("equal")
    fig.colorbar(sc, ax=ax, shrink=0.8, label="layer")
    sub = f"Spearman r = {spearman_r:+.3f}" if spearman_r is not None else ""
    ax.set_title("\n".join(t for t in (title, sub) if t), fontsize=10)
    return save_figure(fig, plt, path)


def save_figure(fig, plt, path, tight: bool = True) -> Path:
    """Write ``fig`` as a PNG at ``path`` (tight layout unless the caller laid it out) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if tight:
        fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
