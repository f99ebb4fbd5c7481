"""The book's figures, one style. Each function draws one figure and returns it (assign it in a
notebook, so no repr is printed above the figure)."""

from __future__ import annotations

import matplotlib
import matplotlib.pyplot as plt  # the backend is the caller's: inline in a kernel, Agg when headless
import numpy as np
from matplotlib.ticker import FuncFormatter

PALETTE = ["#3b6ea8", "#d1893b", "#5a9e6f", "#b0495a", "#7a62a8", "#8c8c8c"]


def style() -> None:
    plt.rcParams.update({
        "figure.figsize": (7.5, 3.6), "figure.dpi": 110, "axes.spines.top": False,
        "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3, "font.size": 10,
        "axes.prop_cycle": matplotlib.cycler(color=PALETTE),
    })


def plain_log_axis(axis) -> None:
    """Label a log axis with plain numbers (30, 100, 300), not ``3×10^1``."""
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(FuncFormatter(lambda v, _: ""))


def bar_scores(frame, title: str = "", ylabel: str = "main score (×100)", ax=None):
    """Grouped bars: rows of ``frame`` on the x axis, one bar per column."""
    style()
    ax = ax or plt.subplots()[1]
    frame.plot.bar(ax=ax, width=0.8, rot=30)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    for label in ax.get_xticklabels():
        label.set_ha("right")
    ax.figure.tight_layout()
    return ax.figure


def curves(series: dict, xlabel: str, ylabel: str, title: str = "", ax=None, logy: bool = False,
           logx: bool = False):
    """Line plot of ``{label: (xs, ys)}``."""
    style()
    ax = ax or plt.subplots()[1]
    for label, (xs, ys) in series.items():
        ax.plot(xs, ys, label=label, marker="o" if len(xs) <= 12 else None, markersize=3)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if logy:
        ax.set_yscale("log")
        plain_log_axis(ax.yaxis)
    if logx:
        ax.set_xscale("log", base=2)
        plain_log_axis(ax.xaxis)
    ax.legend(fontsize=8)
    ax.figure.tight_layout()
    return ax.figure


def soft_mask_panels(soft, steps, n: int = 48):
    """The GG-SM future weights ``w[i, j]`` (j > i) at several optimiser steps, first ``n`` positions."""
    style()
    fig, axes = plt.subplots(1, len(steps), figsize=(3.4 * len(steps), 3.4))
    n = min(n, soft.max_len)
    for ax, step in zip(np.atleast_1d(axes), steps):
        w = soft.future_weights(int(step))[:n, :n].cpu().numpy()
        w = np.where(np.triu(np.ones_like(w), 1) > 0, w, np.nan)
        image = ax.imshow(w, vmin=0, vmax=1, cmap="viridis")
        ax.set_title(f"step {int(step)}")
        ax.set_xlabel("key position j")
        ax.set_ylabel("query position i")
        ax.grid(False)
    fig.colorbar(image, ax=axes, shrink=0.8, label="future weight w")
    return fig


def panels_by_length(table, tasks, ylabel: str):
    """One panel per task: score against document length, one line per model (``table`` is indexed by
    (task, length) with a column per model)."""
    style()
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.6), sharey=True)
    for ax, task in zip(np.atleast_1d(axes), tasks):
        sub = table.loc[task]
        for name in sub.columns:
            ax.plot(sub.index, sub[name], marker="o", label=name)
        ax.set_xscale("log", base=2)
        plain_log_axis(ax.xaxis)
        ax.set_xlabel("document length (words)")
        ax.set_title(task)
    np.atleast_1d(axes)[0].set_ylabel(ylabel)
    np.atleast_1d(axes)[-1].legend(fontsize=8)
    fig.tight_layout()
    return fig


def speedup_against_limit(points: list[dict]):
    """Each benchmark point's KV-cache speed-ups against its token-ratio limit (L + Δ)/Δ."""
    style()
    fig, ax = plt.subplots()
    limits = np.array([r["token_ratio_limit"] for r in points])
    for label, key in [("vs own recompute", "speedup_vs_recompute"), ("vs teacher B", "speedup_vs_teacher"),
                       ("vs A+Echo", "speedup_vs_echo")]:
        ax.scatter(limits, [r[key] for r in points], label=label, s=18)
    grid = np.linspace(1, limits.max() * 1.05, 50)
    ax.plot(grid, grid, "--", color="grey", label="limit (L + Δ)/Δ")
    ax.set_xlabel("token ratio (L + Δ)/Δ")
    ax.set_ylabel("speed-up of the KV cache")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def distance_histogram(distances, tolerance: float = 1e-6, xlabel: str = "log10 cosine distance"):
    """Histogram of log10 distances with the tolerance marked."""
    style()
    fig, ax = plt.subplots()
    ax.hist(np.log10(np.maximum(np.asarray(distances), 1e-17)), bins=20)
    ax.axvline(np.log10(tolerance), color="grey", linestyle="--", label=f"tolerance {tolerance:.0e}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
