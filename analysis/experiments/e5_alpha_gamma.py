"""E5: final accuracy of the gradient filter over log-spaced alpha x gamma, best cell marked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.patches import Rectangle

from analysis import plotting
from analysis.frame import Experiment, cell_stats, note_other_axes
from analysis.report import Section, pm, pp

KEY, NAME = "e5", "e5_alpha_gamma"
TITLE = "E5 · the filter's two rates: alpha x gamma"
CLAIM = (
    "Seven latent-weight hyperparameters reduce to three filter parameters; two of them, alpha and gamma, span "
    "the whole search space of a constant schedule, so one alpha x gamma grid covers what a sweep over learning "
    "rate, weight decay, momentum and init scale would."
)
ALPHA, GAMMA = "binary_opt.alpha", "binary_opt.gamma"
NEAR_BEST = 0.01  # how close to the best cell counts as "as good", in accuracy


def cells(experiment: Experiment) -> pd.DataFrame:
    runs = experiment.runs[experiment.runs["binary_opt.name"] == "filter"]
    note_other_axes(experiment, runs, {ALPHA, GAMMA})
    return cell_stats(runs, [ALPHA, GAMMA])


def where(cell: pd.Series) -> str:
    return f"alpha {plotting.sci(cell[ALPHA])}, gamma {plotting.sci(cell[GAMMA])}"


def analyse(experiment: Experiment, out_dir: Path) -> Section:
    section = Section(KEY, TITLE, CLAIM, notices=experiment.notices)
    stats = cells(experiment)
    if stats.empty:
        section.findings.append("no gradient-filter runs: nothing to draw")
        return section
    best, worst = stats.loc[stats["mean"].idxmax()], stats.loc[stats["mean"].idxmin()]
    near = int((stats["mean"] >= best["mean"] - NEAR_BEST).sum())
    section.findings += [
        f"{len(stats)} cells ({stats[ALPHA].nunique()} alphas x {stats[GAMMA].nunique()} gammas)",
        f"best cell: {where(best)}: **{pm(best['mean'], best['std'])}**",
        f"worst cell: {where(worst)}: **{pm(worst['mean'], worst['std'])}**"
        f" (range **{pp(best['mean'] - worst['mean'])}**)",
        f"cells within {pp(NEAR_BEST)} of the best: **{near}** of {len(stats)}",
    ]
    section.caption = experiment.caption()
    section.figures = draw(stats, best, out_dir, section.caption)
    return section


def draw(stats: pd.DataFrame, best: pd.Series, out_dir: Path, caption: str) -> list[Path]:
    fig, axes = plotting.figure(2, 1, TITLE)
    ax, std_ax = axes[0]
    alphas, gammas = sorted(stats[ALPHA].unique()), sorted(stats[GAMMA].unique())
    mean, std = (np.full((len(gammas), len(alphas)), np.nan) for _ in range(2))
    for a, g, m, s in zip(stats[ALPHA], stats[GAMMA], stats["mean"], stats["std"]):
        mean[gammas.index(g), alphas.index(a)] = m * 100
        std[gammas.index(g), alphas.index(a)] = s * 100
    plotting.heatmap(ax, alphas, gammas, mean, "final " + plotting.ACC_LABEL)
    x_edges, y_edges = plotting.log_edges(alphas), plotting.log_edges(gammas)
    i, j = alphas.index(best[ALPHA]), gammas.index(best[GAMMA])
    ax.add_patch(
        Rectangle(
            (x_edges[i], y_edges[j]),
            x_edges[i + 1] - x_edges[i],
            y_edges[j + 1] - y_edges[j],
            fill=False,
            edgecolor="red",
            linewidth=2.5,
        )
    )
    ax.set_title("mean over seeds; red box: best cell")
    plotting.heatmap(std_ax, alphas, gammas, std, "std over seeds (pp)")
    std_ax.set_title("seed spread per cell")
    for a in (ax, std_ax):
        a.set_xlabel("alpha (log)")
        a.set_ylabel("gamma (log)")
    return plotting.save(fig, out_dir, NAME, caption)
