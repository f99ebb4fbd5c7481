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


def soft_mask_panels(soft, steps, n: int = 48, titles=None):
    """The GG-SM future weights ``w[i, j]`` (j > i) at several optimiser steps, first ``n`` positions."""
    style()
    fig, axes = plt.subplots(1, len(steps), figsize=(3.4 * len(steps) + 1.2, 3.4), squeeze=False)
    n = min(n, soft.max_len)
    for k, (ax, step) in enumerate(zip(axes[0], steps)):
        w = soft.future_weights(int(step))[:n, :n].cpu().numpy()
        w = np.where(np.triu(np.ones_like(w), 1) > 0, w, np.nan)
        image = ax.imshow(w, vmin=0, vmax=1, cmap="viridis")
        ax.set_title(f"{titles[k]}: step {int(step)}" if titles else f"step {int(step)}")
        ax.set_xlabel("key position j")
        ax.set_ylabel("query position i")
        ax.grid(False)
    fig.colorbar(image, ax=list(axes[0]), shrink=0.8, label="future weight w")
    return fig


def seed_points(per_model: dict[str, list[float]], ylabel: str, title: str = "", reference: dict | None = None):
    """Each model's per-seed values as points, with their mean as a bar; optional reference lines."""
    style()
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(per_model) + 2), 3.4))
    for k, (name, values) in enumerate(per_model.items()):
        values = np.asarray(values, dtype=float)
        ax.bar(k, values.mean(), color=PALETTE[k % len(PALETTE)], alpha=0.35, width=0.6)
        ax.scatter(np.full(len(values), k) + np.linspace(-0.12, 0.12, len(values)), values,
                   color=PALETTE[k % len(PALETTE)], s=22, zorder=3)
    for label, value in (reference or {}).items():
        ax.axhline(value, color="grey", linestyle="--", linewidth=1, label=label)
    ax.set_xticks(range(len(per_model)), list(per_model), rotation=0)
    lows = [min(v) for v in per_model.values()] + list((reference or {}).values())
    highs = [max(v) for v in per_model.values()] + list((reference or {}).values())
    pad = 0.15 * (max(highs) - min(lows) + 1e-9)
    ax.set_ylim(min(lows) - pad, max(highs) + pad)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if reference:
        ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def difference_bars(diffs: dict, xlabel: str, title: str = ""):
    """Horizontal bars of differences (``stats.Difference``) with their 95 % intervals (the interval
    the verdicts read); grey where it holds 0."""
    style()
    names = list(diffs)
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(names) + 1.2))
    means = np.array([diffs[n].mean for n in names])
    errors = np.array([[diffs[n].mean - diffs[n].ci[0] for n in names], [diffs[n].ci[1] - diffs[n].mean for n in names]])
    colors = [PALETTE[0] if diffs[n].resolved else PALETTE[5] for n in names]
    ax.barh(range(len(names)), means, xerr=errors, color=colors, alpha=0.8, capsize=3)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def intervals(rows: dict[str, tuple[float, float, float]], xlabel: str, title: str = "",
              references: dict[str, float] | None = None, limits: tuple[float, float] | None = None):
    """One row per label: a point with its 95 % interval (``(point, low, high)``; an unbounded end
    runs to the edge), and vertical reference lines (the null, the paper's figure)."""
    style()
    names = list(rows)
    fig, ax = plt.subplots(figsize=(7.5, 0.42 * len(names) + 1.3))
    finite = [v for row in rows.values() for v in row if np.isfinite(v)] + list((references or {}).values())
    lo_edge, hi_edge = limits or (min(finite), max(finite))
    pad = 0.08 * (hi_edge - lo_edge + 1e-9)
    lo_edge, hi_edge = lo_edge - pad, hi_edge + pad
    for k, name in enumerate(names):
        point, lo, hi = rows[name]
        lo, hi = (lo if np.isfinite(lo) else lo_edge), (hi if np.isfinite(hi) else hi_edge)
        ax.plot([lo, hi], [k, k], color=PALETTE[0], linewidth=2.2, solid_capstyle="butt")
        ax.scatter([point], [k], color=PALETTE[0], s=30, zorder=3)
    for i, (label, value) in enumerate((references or {}).items()):
        ax.axvline(value, color=PALETTE[(i + 1) % len(PALETTE)], linestyle="--", linewidth=1, label=label)
    ax.set_xlim(lo_edge, hi_edge)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    if references:
        ax.legend(fontsize=8, frameon=False, loc="lower right")
    fig.tight_layout()
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


def claims_figure(rows: list[dict], title: str = ""):
    """The claims table (claim, paper, measured here, basis, verdict) drawn as a figure, verdicts
    coloured; ``basis`` (what the interval rests on) is blank in a row that does not record one."""
    import textwrap

    style()
    colours = {"holds": "#d8ecd9", "does not hold": "#f3d6d9", "not resolved": "#eeeeee"}
    wrap = lambda text, width: "\n".join(textwrap.wrap(str(text), width))
    cells = [[wrap(r["claim"], 26), wrap(r["paper"], 22), wrap(r["here"], 44),
              wrap("" if r.get("basis") in (None, "not run") else r["basis"], 30), r["verdict"]] for r in rows]
    lines = [max(c.count("\n") + 1 for c in row) for row in cells]
    fig, ax = plt.subplots(figsize=(15, 0.3 * (sum(lines) + 1) + 0.6))
    line = 1 / (sum(lines) + 1)  # each text line's share of the axes, so the table fills it
    ax.axis("off")
    table = ax.table(cellText=cells, colLabels=["claim", "paper", "measured here", "basis", "verdict"],
                     loc="upper center", cellLoc="left", colWidths=[0.18, 0.15, 0.33, 0.22, 0.12])
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    for (row, col), cell in table.get_celld().items():
        cell.set_height(line * (lines[row - 1] if row else 1))
        if row == 0:
            cell.set_text_props(weight="bold")
            continue
        if col == 4:
            cell.set_facecolor(colours.get(rows[row - 1]["verdict"], "white"))
    ax.set_title(title, fontsize=11)
    return fig
