"""E2: final accuracy over the learning-rate x weight-decay grid; cells with equal products share alpha."""

from __future__ import annotations

from pathlib import Path

import matplotlib.cm as cm
import matplotlib.colors as mcolors
import numpy as np
import pandas as pd

from analysis import plotting
from analysis.frame import Experiment, cell_stats, log_key, note_other_axes
from analysis.report import Section, pp

KEY, NAME = "e2", "e2_lr_wd"
TITLE = "E2 · learning rate and weight decay matter only through their product"
CLAIM = (
    "With weight decay, latent SGD is an exponential moving average of the gradients with rate "
    "alpha = learning rate x weight decay, so cells on one iso-alpha diagonal of the learning-rate x weight-decay "
    "grid train alike: accuracy varies across diagonals, not along them."
)
LR, WD = "binary_opt.lr", "binary_opt.weight_decay"


def cells(experiment: Experiment) -> pd.DataFrame:
    """Mean/std/n of final accuracy per (lr, wd) cell with wd > 0, and each cell's diagonal (log10 of lr*wd)."""
    runs = experiment.runs
    names = runs["binary_opt.name"].value_counts()
    optimizer = names.index[0]
    if len(names) > 1:
        experiment.notices.append(
            f"only binary_opt.name = {optimizer} drawn (also present: {', '.join(names.index[1:])})"
        )
    runs = runs[runs["binary_opt.name"] == optimizer]
    zero = runs[runs[WD] <= 0]
    if len(zero):
        experiment.notices.append(f"{len(zero)} run(s) with weight decay 0 have no alpha and are not drawn")
    runs = runs[runs[WD] > 0]
    note_other_axes(experiment, runs, {LR, WD})
    stats = cell_stats(runs, [LR, WD])
    stats["diagonal"] = [log_key(lr * wd) for lr, wd in zip(stats[LR], stats[WD])]
    return stats


def spreads(stats: pd.DataFrame) -> dict[str, float]:
    """along: mean over diagonals with >= 2 cells of (max - min) of their cell means; across: max - min of the
    diagonal means; noise: mean seed std over cells. All in accuracy (fractions)."""
    diagonals = stats.groupby("diagonal")["mean"]
    ranges = diagonals.agg(lambda v: v.max() - v.min())[diagonals.size() >= 2]
    means = diagonals.mean()
    return {
        "along": float(ranges.mean()) if len(ranges) else np.nan,
        "across": float(means.max() - means.min()) if len(means) >= 2 else np.nan,
        "noise": float(stats["std"].mean()),
        "diagonals_shared": int(len(ranges)),
        "diagonals": int(len(means)),
    }


def analyse(experiment: Experiment, out_dir: Path) -> Section:
    section = Section(KEY, TITLE, CLAIM, notices=experiment.notices)
    stats = cells(experiment)
    if stats.empty:
        section.findings.append("no runs with weight decay > 0: nothing to draw")
        return section
    s = spreads(stats)
    best = stats.loc[stats["mean"].idxmax()]
    section.findings += [
        f"{len(stats)} cells on {s['diagonals']} iso-alpha diagonals, "
        f"{s['diagonals_shared']} of them holding 2 or more cells",
        f"accuracy spread along a diagonal (mean of max - min): **{pp(s['along'])}**; "
        f"across diagonals (max - min of diagonal means): **{pp(s['across'])}**",
        f"seed noise (mean std over seeds per cell): **{pp(s['noise'])}**",
        f"best cell: lr {plotting.sci(best[LR])}, weight decay {plotting.sci(best[WD])} "
        f"(alpha {plotting.sci(best[LR] * best[WD])}): **{100 * best['mean']:.2f} %**",
    ]
    section.caption = experiment.caption()
    section.figures = draw(stats, out_dir, section.caption)
    return section


def draw(stats: pd.DataFrame, out_dir: Path, caption: str) -> list[Path]:
    fig, axes = plotting.figure(2, 1, TITLE)
    left, right = axes[0]
    lrs, wds = sorted(stats[LR].unique()), sorted(stats[WD].unique())
    grid = np.full((len(wds), len(lrs)), np.nan)
    for lr, wd, mean in zip(stats[LR], stats[WD], stats["mean"]):
        grid[wds.index(wd), lrs.index(lr)] = mean * 100
    plotting.heatmap(left, lrs, wds, grid, "final " + plotting.ACC_LABEL)
    lo, hi = left.get_xlim()
    xs = np.geomspace(lo, hi, 50)
    shared = stats.groupby("diagonal").size()
    for diagonal in shared[shared >= 2].index:
        left.plot(xs, 10.0**diagonal / xs, color="white", linestyle="--", linewidth=0.8, alpha=0.8)
    left.set_xlim(lo, hi)
    left.set_ylim(*plotting.log_edges(wds)[[0, -1]])
    left.set_xlabel("learning rate η (log)")
    left.set_ylabel("weight decay λ (log)")
    left.set_title("mean over seeds; dashed: η·λ = const")
    norm = mcolors.LogNorm(min(lrs), max(lrs)) if len(lrs) > 1 else None
    for lr, group in stats.groupby(LR):
        alpha = group[LR] * group[WD]
        color = cm.plasma(norm(lr) * 0.85) if norm else "tab:blue"
        right.errorbar(
            alpha,
            group["mean"] * 100,
            yerr=(group["std"] * 100).fillna(0),
            fmt="o",
            ms=4,
            capsize=2,
            color=color,
            label=f"η = {plotting.sci(lr)}",
        )
    plotting.log_axis(right, "x")
    right.set_xlabel("alpha = η·λ (log)")
    right.set_ylabel("final " + plotting.ACC_LABEL)
    right.set_title("each cell at its alpha = η·λ")
    right.legend(fontsize=7, ncol=2 if len(lrs) > 5 else 1)
    return plotting.save(fig, out_dir, NAME, caption + " · error bars ±1 std over seeds")
