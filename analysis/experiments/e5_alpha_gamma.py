"""E5: test accuracy of the gradient filter over alpha x gamma, the cell chosen on validation, the frozen control."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.patches import Rectangle

from analysis import plotting
from analysis.experiments import intervals
from analysis.frame import Experiment, note_other_axes
from analysis.report import Section, ci, pp
from analysis.stats import Interval, cell_intervals, difference, interval, margin, noise_floor, paired
from analysis.verdicts import INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED, Verdict

KEY, NAME = "e5", "e5_alpha_gamma"
TITLE = "E5 · the filter's two rates alpha x gamma: do both act on accuracy?"
CLAIM = (
    "The gradient filter has two rates that matter, alpha (how fast old gradients are forgotten) and gamma (the "
    "gradient average, momentum's role); in the regime alpha x T ~ 1..100 both act on accuracy, so an alpha x gamma "
    "grid is the search space of a constant schedule."
)
VERDICT_CLAIM = "alpha and gamma both act on accuracy"
ALPHA, GAMMA = "binary_opt.alpha", "binary_opt.gamma"
ACC, VAL = "final_test_acc", "final_val_acc"
CONTROL_GAP = 0.05  # the testbed can tell only if the best cell beats the frozen control by more than this
RULE = (
    "noise = median seed std of the filter cells, delta = max(0.5 pp, 2 x noise). Precondition: the cell chosen "
    "on validation (highest mean final_val_acc) minus the frozen control, paired by seed on final_test_acc, reads "
    "`greater` than 5 pp (95 % CI above it); otherwise inconclusive (the testbed cannot tell). alpha acts when, at "
    "the chosen cell's gamma, the best minus the worst alpha (both chosen on validation), paired by seed on "
    "final_test_acc, reads `greater` than delta; likewise gamma at the chosen cell's alpha. supported: both act; "
    "not supported: both read `not greater` (CI below delta); otherwise inconclusive."
)


def filter_runs(experiment: Experiment) -> pd.DataFrame:
    runs = experiment.runs[experiment.runs["binary_opt.name"] == "filter"]
    note_other_axes(experiment, runs, {ALPHA, GAMMA})
    return runs


def frozen(experiment: Experiment) -> pd.DataFrame:
    """This grid's own frozen control, else the frozen runs of the same preset and context elsewhere."""
    own = experiment.runs[experiment.runs["binary_opt.name"] == "frozen"]
    return own if len(own) else experiment.control()


def cells(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (alpha, gamma): test mean/ci/std/n and the validation mean the selection uses."""
    stats = cell_intervals(runs, [ALPHA, GAMMA], ACC)
    stats["val"] = cell_intervals(runs, [ALPHA, GAMMA], VAL)["mean"].to_numpy()
    return stats


def _runs_at(runs: pd.DataFrame, alpha: float, gamma: float) -> pd.DataFrame:
    return runs[np.isclose(runs[ALPHA], alpha) & np.isclose(runs[GAMMA], gamma)]


def spread(runs: pd.DataFrame, stats: pd.DataFrame, fixed: str, value: float) -> tuple[Interval, str]:
    """Best minus worst (chosen on validation) of the cells at ``fixed`` == value, paired by seed on test; and a
    description. n = 0 where fewer than two cells share that value."""
    line = stats[np.isclose(stats[fixed], value)]
    if len(line) < 2:
        return Interval(math.nan, math.nan, 0), "fewer than 2 cells"
    best, worst = line.loc[line["val"].idxmax()], line.loc[line["val"].idxmin()]
    diff = paired(_runs_at(runs, best[ALPHA], best[GAMMA]), _runs_at(runs, worst[ALPHA], worst[GAMMA]), ACC)
    moved = GAMMA if fixed == ALPHA else ALPHA
    name = moved.split(".")[-1]
    return diff, f"{name} {plotting.sci(best[moved])} - {name} {plotting.sci(worst[moved])}"


def verdicts(experiment: Experiment) -> list[Verdict]:
    runs = filter_runs(experiment)
    if runs.empty:
        return [Verdict(KEY, VERDICT_CLAIM, INCONCLUSIVE, "no gradient-filter runs", math.nan, math.nan, 0, RULE)]
    stats = cells(runs)
    noise = noise_floor(runs, [ALPHA, GAMMA], ACC)
    delta = margin(noise)
    chosen = stats.loc[stats["val"].idxmax()]
    n = int(stats["n"].min())
    control = frozen(experiment)
    if control.empty:
        return [Verdict(KEY, VERDICT_CLAIM, INCONCLUSIVE, "no frozen control runs", math.nan, noise, n, RULE)]
    gap = paired(_runs_at(runs, chosen[ALPHA], chosen[GAMMA]), control, ACC)
    if difference(gap, CONTROL_GAP) != "greater":
        return [
            Verdict(
                KEY, VERDICT_CLAIM, INCONCLUSIVE,
                f"chosen cell - frozen control, paired (testbed cannot tell: not clearly > {pp(CONTROL_GAP)})",
                gap.mean, noise, gap.n, RULE,
            )
        ]
    alpha_diff, _ = spread(runs, stats, GAMMA, chosen[GAMMA])
    gamma_diff, _ = spread(runs, stats, ALPHA, chosen[ALPHA])
    readings = (difference(alpha_diff, delta), difference(gamma_diff, delta))
    if readings == ("greater", "greater"):
        verdict = SUPPORTED
    elif readings == ("not greater", "not greater"):
        verdict = NOT_SUPPORTED
    else:
        verdict = INCONCLUSIVE
    statistic = (
        f"paired spread over alpha at the chosen gamma ({readings[0]}; {pp(alpha_diff.mean)}) and over gamma at "
        f"the chosen alpha ({readings[1]}; {pp(gamma_diff.mean)}); value: the smaller"
    )
    value = min(alpha_diff.mean, gamma_diff.mean)
    return [Verdict(KEY, VERDICT_CLAIM, verdict, statistic, value, noise, min(alpha_diff.n, gamma_diff.n), RULE)]


def where(cell: pd.Series) -> str:
    return f"alpha {plotting.sci(cell[ALPHA])}, gamma {plotting.sci(cell[GAMMA])}"


def analyse(experiment: Experiment, out_dir: Path) -> Section:
    section = Section(KEY, TITLE, CLAIM, notices=experiment.notices)
    runs = filter_runs(experiment)
    section.verdicts = verdicts(experiment)
    if runs.empty:
        section.findings.append("no gradient-filter runs: nothing to draw")
        return section
    stats = cells(runs)
    chosen = stats.loc[stats["val"].idxmax()]
    control = frozen(experiment)
    noise = noise_floor(runs, [ALPHA, GAMMA], ACC)
    worst = stats.loc[stats["mean"].idxmin()]
    section.findings += [
        f"{len(stats)} cells ({stats[ALPHA].nunique()} alphas x {stats[GAMMA].nunique()} gammas); seed noise "
        f"(median cell std) **{pp(noise)}**, margin delta **{pp(margin(noise))}**",
        f"cell chosen on validation: {where(chosen)}: test **{ci(chosen['mean'], chosen['ci'], int(chosen['n']))}**",
        f"worst cell (test): {where(worst)}: **{ci(worst['mean'], worst['ci'], int(worst['n']))}**",
    ]
    for fixed, value in ((GAMMA, chosen[GAMMA]), (ALPHA, chosen[ALPHA])):
        diff, what = spread(runs, stats, fixed, value)
        if diff.n == 0:
            section.findings.append(f"at {fixed.split('.')[-1]} {plotting.sci(value)}: {what}, no spread to read")
            continue
        section.findings.append(
            f"at {fixed.split('.')[-1]} {plotting.sci(value)}: {what} (chosen on validation), paired on test: "
            f"**{pp(diff.mean)}** ± {pp(diff.half)} (n={diff.n})"
        )
    if control.empty:
        section.findings.append("no frozen control runs of this preset and dataset/model: no baseline")
        experiment.notices.append("frozen control absent: the figure has no control band")
    else:
        c = interval(control[ACC])
        gap = paired(_runs_at(runs, chosen[ALPHA], chosen[GAMMA]), control, ACC)
        section.findings.append(
            f"frozen control (binary weights never trained): **{ci(c.mean, c.half, c.n)}**; chosen cell minus "
            f"control, paired: **{pp(gap.mean)}** ± {pp(gap.half)} (n={gap.n})"
        )
    section.caption = experiment.caption()
    section.figures = draw(stats, chosen, control, out_dir, section.caption)
    return section


def draw(stats: pd.DataFrame, chosen: pd.Series, control: pd.DataFrame, out_dir: Path, caption: str) -> list[Path]:
    fig, axes = plotting.figure(2, 1, TITLE)
    ax, line_ax = axes[0]
    alphas, gammas = sorted(stats[ALPHA].unique()), sorted(stats[GAMMA].unique())
    mean = np.full((len(gammas), len(alphas)), np.nan)
    for a, g, m in zip(stats[ALPHA], stats[GAMMA], stats["mean"]):
        mean[gammas.index(g), alphas.index(a)] = m * 100
    plotting.heatmap(ax, alphas, gammas, mean, "final " + plotting.ACC_LABEL, annotate=False)
    middle = np.nanmean(mean)
    for row in stats.itertuples(index=False):
        m, half, n = getattr(row, "mean"), getattr(row, "ci"), int(getattr(row, "n"))
        text = f"{100 * m:.1f}" + (f"\n±{100 * half:.1f}" if math.isfinite(half) else "") + f"\nn={n}"
        color = "black" if 100 * m > middle else "white"
        ax.text(row[0], row[1], text, ha="center", va="center", fontsize=6, color=color)
    x_edges, y_edges = plotting.log_edges(alphas), plotting.log_edges(gammas)
    i, j = alphas.index(chosen[ALPHA]), gammas.index(chosen[GAMMA])
    ax.add_patch(
        Rectangle(
            (x_edges[i], y_edges[j]), x_edges[i + 1] - x_edges[i], y_edges[j + 1] - y_edges[j],
            fill=False, edgecolor="red", linewidth=2.5,
        )
    )
    ax.set_title("test mean ± 95 % CI, n\nred box: cell chosen on validation")
    ax.set_xlabel("alpha (log)")
    ax.set_ylabel("gamma (log)")
    colors = plotting.plt.cm.viridis(np.linspace(0, 0.9, len(gammas)))
    for color, g in zip(colors, gammas):
        line = stats[np.isclose(stats[GAMMA], g)].sort_values(ALPHA)
        intervals.points(line_ax, line[ALPHA], line["mean"], line["ci"], line["n"], color=color,
                         label=f"gamma {plotting.sci(g)}")
        line_ax.plot(line[ALPHA], 100 * line["mean"], "-", color=color, linewidth=0.8)
    has_control = intervals.control_band(line_ax, control) is not None
    plotting.log_axis(line_ax, "x")
    line_ax.set_xlabel("alpha (log)")
    line_ax.set_ylabel("final " + plotting.ACC_LABEL)
    line_ax.set_title("per gamma; dotted band: frozen control" if has_control else "per gamma (no frozen control)")
    line_ax.legend(fontsize=6.5)
    return plotting.save(fig, out_dir, NAME, caption + " · error bars and band: 95 % t-interval over seeds")
