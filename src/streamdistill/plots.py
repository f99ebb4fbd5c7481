"""The book's figures, one style."""

from __future__ import annotations

import matplotlib
import matplotlib.pyplot as plt  # the backend is the caller's: inline in a kernel, Agg when headless

PALETTE = ["#3b6ea8", "#d1893b", "#5a9e6f", "#b0495a", "#7a62a8", "#8c8c8c"]


def style() -> None:
    plt.rcParams.update({
        "figure.figsize": (7.5, 3.6), "figure.dpi": 110, "axes.spines.top": False,
        "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3, "font.size": 10,
        "axes.prop_cycle": matplotlib.cycler(color=PALETTE),
    })


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
    return ax


def curves(series: dict, xlabel: str, ylabel: str, title: str = "", ax=None, logy: bool = False):
    """Line plot of ``{label: (xs, ys)}``."""
    style()
    ax = ax or plt.subplots()[1]
    for label, (xs, ys) in series.items():
        ax.plot(xs, ys, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if logy:
        ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.figure.tight_layout()
    return ax
