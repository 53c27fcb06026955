"""Figures of the study report: the random-control null per benchmark, and arm scores."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from coloc_ray.analysis.plots import pyplot, save_figure

ARM_COLORS = {"base": "0.45", "A": "#c0392b", "B": "#e67e22", "C": "#8e44ad", "D": "#2471a3"}


def plot_null(null: dict, labels: dict[str, str], path: str | Path, base: dict | None = None,
              scale: float = 100.0, unscaled: Sequence[str] = ()) -> Path:
    """One panel per metric: the arm-D null (one unit per control seed) as a jittered strip (a histogram
    behind it when n >= 10), arm A's runs as diamonds and its mean as a red line, the base model as a
    dashed grey line. Metrics in ``unscaled`` (held-out loss) are drawn in their own unit, lower is better.

    Args:
        null: :func:`coloc_ray.analysis.ablation_stats.null_table` output.
        labels: display name per benchmark.
        path: PNG to write.
        base: base-model scores per benchmark (optional).
        scale: display multiplier (100: fractions shown as points).
    """
    plt = pyplot()
    benches = list(null)
    cols = min(3, max(1, len(benches)))
    rows = int(np.ceil(len(benches) / cols)) or 1
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.6 * rows), dpi=120, squeeze=False)
    rng = np.random.default_rng(0)  # jitter only: fixed so the figure is reproducible
    for ax, bench in zip(axes.ravel(), benches):
        e = null[bench]
        k = 1.0 if bench in unscaled else scale
        d = np.asarray(e["null"], dtype=float) * k
        if d.size >= 10:
            ax.hist(d, bins=min(20, d.size // 2), color=ARM_COLORS["D"], alpha=0.25,
                    weights=np.full(d.size, 1.0 / d.size))
        ax.scatter(d, 0.5 + rng.uniform(-0.12, 0.12, d.size) if d.size else d, s=28,
                   color=ARM_COLORS["D"], label="D (one per control seed)", zorder=3)
        a = np.asarray(e["a_scores"], dtype=float) * k
        ax.scatter(a, np.full(a.size, 0.8), marker="D", s=34, color=ARM_COLORS["A"], label="A runs", zorder=3)
        if e["a_mean"] is not None:
            ax.axvline(e["a_mean"] * k, color=ARM_COLORS["A"], lw=2, label="A mean")
        if base and bench in base:
            ax.axvline(base[bench] * k, color=ARM_COLORS["base"], ls="--", lw=1.4, label="base")
        p = "n/a" if e["p"] is None else f"{e['p']:.3g}" + ("" if e["meaningful"] else " (too few D seeds)")
        ax.set_title(f"{labels.get(bench, bench)}: empirical p = {p}", fontsize=9)
        ax.set_yticks([])
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("loss (nats/token, lower is better)" if bench in unscaled else "score (points)", fontsize=8)
        ax.grid(axis="x", alpha=0.25)
    for ax in axes.ravel()[len(benches):]:
        ax.axis("off")
    handles, names = axes.ravel()[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.suptitle("Random-control null (arm D) per benchmark, arm A marked", fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 0.95))
    return save_figure(fig, plt, path, tight=False)


def plot_arms(rows: Sequence[dict], benchmarks: Sequence[str], labels: dict[str, str],
              path: str | Path, scale: float = 100.0) -> Path:
    """Grouped bars of Table 4 (mean over seeds, error bar = std), the base model first."""
    plt = pyplot()
    cols = [*benchmarks, "avg"]
    width = 0.8 / max(1, len(rows))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(cols) + 2), 3.8), dpi=120)
    x = np.arange(len(cols))
    for i, row in enumerate(rows):
        cells = [row["avg"] if c == "avg" else row["scores"][c] for c in cols]
        mean = [np.nan if c["mean"] is None else c["mean"] * scale for c in cells]
        err = [0.0 if not c["std"] else c["std"] * scale for c in cells]
        ax.bar(x + (i - (len(rows) - 1) / 2) * width, mean, width, yerr=err, capsize=2,
               color=ARM_COLORS.get(row["arm"], None), label=row["arm"])
    ax.set_xticks(x)
    ax.set_xticklabels([labels.get(c, "Avg" if c == "avg" else c) for c in cols], fontsize=8)
    ax.set_ylabel("score (points)")
    ax.grid(axis="y", alpha=0.25)
    ax.legend(fontsize=8, ncol=len(rows), frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.1))
    ax.set_title("Score per arm (mean over seeds; bars: std)", fontsize=10)
    return save_figure(fig, plt, path)

