"""E7: AdamW against its linear filter reading (alpha = lr x weight decay, gamma = 1 - beta1), and the Adam
variants (L2 decay, beta2 0.9, eps 1e-3, no decay) each against AdamW, paired by seed."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import plotting
from analysis.experiments import intervals
from analysis.frame import Experiment
from analysis.report import Section, ci, pp
from analysis.stats import Interval, cell_intervals, equivalence, margin, noise_floor, paired
from analysis.verdicts import INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED, Verdict
from bnn.config import flatten, from_flat, resolve

KEY, NAME = "e7", "e7_adam"
TITLE = "E7 · AdamW beside its linear filter reading, and Adam's other knobs"
CLAIM = (
    "In Adam, beta1 plays gamma's role and decoupled weight decay gives alpha = lr x weight decay: AdamW is, to "
    "first order, the filter with (alpha, gamma = 1 - beta1); beta2 and eps rescale each weight's gradient "
    "non-linearly, and L2 decay inside the gradient (Adam) is a different algorithm from decoupled decay (AdamW)."
)
VERDICT_CLAIM = "AdamW matches its linear filter twin (alpha = lr x wd, gamma = 1 - beta1)"
ACC = "final_test_acc"
BETA1, BETA2, EPS, MODE = "binary_opt.beta1", "binary_opt.beta2", "binary_opt.eps", "binary_opt.decay_mode"
LR, WD = "binary_opt.lr", "binary_opt.weight_decay"
_DEFAULTS = flatten(resolve(from_flat({"binary_opt.name": "adam"})))
RULE = (
    "AdamW: latent Adam with decoupled decay > 0 at the default beta2 and eps; its twin: the filter with "
    "alpha = lr x weight decay and gamma = 1 - beta1. noise = median seed std of all cells, delta = max(0.5 pp, "
    "2 x noise). The paired (by seed) difference AdamW - twin of final_test_acc: `same` (95 % CI inside +-delta) "
    "-> supported; `different` (wholly outside) -> not supported; otherwise (or < 2 paired seeds) inconclusive."
)


def label(row: pd.Series) -> str:
    if row["binary_opt.name"] == "filter":
        return f"filter α {plotting.sci(row['binary_opt.alpha'])}, γ {plotting.sci(row['binary_opt.gamma'])}"
    if row["binary_opt.name"] != "adam":
        return str(row["binary_opt.name"])
    name = "AdamW" if row[MODE] == "decoupled" else "Adam (L2)"
    parts = [f"wd {plotting.sci(row[WD])}"] if row[WD] > 0 else ["no decay"]
    if not math.isclose(row[BETA2], _DEFAULTS[BETA2]):
        parts.append(f"β2 {plotting.sci(row[BETA2])}")
    if not math.isclose(row[EPS], _DEFAULTS[EPS]):
        parts.append(f"eps {plotting.sci(row[EPS])}")
    return f"{name}, {', '.join(parts)}"


def by_cell(experiment: Experiment) -> dict[int, pd.DataFrame]:
    return {int(cell): group for cell, group in experiment.runs.groupby("cell")}


def adamw_and_twin(cells: dict[int, pd.DataFrame]) -> tuple[int | None, int | None]:
    """The AdamW cell (decoupled decay > 0, default beta2 and eps) and its filter twin, or None where absent."""
    for cell, runs in sorted(cells.items()):
        row = runs.iloc[0]
        if (
            row["binary_opt.name"] == "adam" and row[MODE] == "decoupled" and row[WD] > 0
            and math.isclose(row[BETA2], _DEFAULTS[BETA2]) and math.isclose(row[EPS], _DEFAULTS[EPS])
        ):
            alpha, gamma = row[LR] * row[WD], 1 - row[BETA1]
            for other, twin in sorted(cells.items()):
                t = twin.iloc[0]
                if (
                    t["binary_opt.name"] == "filter"
                    and math.isclose(float(t["binary_opt.alpha"]), alpha, rel_tol=1e-6)
                    and math.isclose(float(t["binary_opt.gamma"]), gamma, rel_tol=1e-6)
                ):
                    return cell, other
            return cell, None
    return None, None


def verdicts(experiment: Experiment) -> list[Verdict]:
    cells = by_cell(experiment)
    adamw, twin = adamw_and_twin(cells)
    noise = noise_floor(experiment.runs, ["cell"], ACC)
    if adamw is None or twin is None:
        missing = "AdamW (decoupled decay, default beta2/eps)" if adamw is None else "AdamW's filter twin"
        return [Verdict(KEY, VERDICT_CLAIM, INCONCLUSIVE, f"no {missing} in these runs", math.nan, noise, 0, RULE)]
    diff = paired(cells[adamw], cells[twin], ACC)
    reading = equivalence(diff, margin(noise))
    verdict = {"same": SUPPORTED, "different": NOT_SUPPORTED}.get(reading, INCONCLUSIVE)
    statistic = f"paired difference AdamW - filter twin, final test accuracy ({reading})"
    return [Verdict(KEY, VERDICT_CLAIM, verdict, statistic, diff.mean, noise, diff.n, RULE)]


def analyse(experiment: Experiment, out_dir: Path) -> Section:
    section = Section(KEY, TITLE, CLAIM, notices=experiment.notices)
    section.verdicts = verdicts(experiment)
    cells = by_cell(experiment)
    adamw, twin = adamw_and_twin(cells)
    noise = noise_floor(experiment.runs, ["cell"], ACC)
    delta = margin(noise)
    stats = cell_intervals(experiment.runs, ["cell"], ACC).set_index("cell")
    names = {cell: label(runs.iloc[0]) for cell, runs in cells.items()}
    order = sorted(cells, key=lambda c: (c != adamw, c != twin, cells[c].iloc[0]["binary_opt.name"], names[c]))
    diffs: dict[int, Interval] = {}
    for cell in order:
        s = stats.loc[cell]
        text = f"{names[cell]}: **{ci(s['mean'], s['ci'], int(s['n']))}**"
        if adamw is not None and cell != adamw:
            diffs[cell] = paired(cells[cell], cells[adamw], ACC)
            d = diffs[cell]
            text += f"; minus AdamW, paired: **{pp(d.mean)}** ± {pp(d.half)} (n={d.n}, {equivalence(d, delta)})"
        section.findings.append(text)
    section.findings.append(f"seed noise (median cell std) **{pp(noise)}**, margin delta **{pp(delta)}**")
    if adamw is None:
        experiment.notices.append("no AdamW cell (decoupled decay > 0, default beta2/eps): no paired differences")
    section.caption = experiment.caption()
    section.figures = draw(experiment, cells, order, names, stats, diffs, delta, out_dir, section.caption)
    return section


def draw(
    experiment: Experiment,
    cells: dict[int, pd.DataFrame],
    order: list[int],
    names: dict[int, str],
    stats: pd.DataFrame,
    diffs: dict[int, Interval],
    delta: float,
    out_dir: Path,
    caption: str,
) -> list[Path]:
    flips = {c: intervals.epoch_intervals(experiment.curves, cells[c]["run_id"], "flip_ratio") for c in order}
    flips = {c: f for c, f in flips.items() if len(f) and np.isfinite(f["mean"]).any()}
    if not flips:
        experiment.notices.append("no flip-ratio curves for these runs: no flips panel")
    fig, axes = plotting.figure(1 + bool(diffs) + bool(flips), 1, TITLE)
    acc_ax = axes[0][0]
    colors = {c: plotting.OPTIMIZER_COLORS.get(cells[c].iloc[0]["binary_opt.name"], "tab:gray") for c in order}
    for k, cell in enumerate(order):
        s = stats.loc[cell]
        intervals.points(acc_ax, [k], [s["mean"]], [s["ci"]], [int(s["n"])], color=colors[cell])
    if intervals.control_band(acc_ax, experiment.control()) is None:
        experiment.notices.append("no frozen control runs of this preset and dataset/model: no control band")
    else:
        acc_ax.legend(fontsize=6.5)
    acc_ax.set_xticks(range(len(order)), [names[c].replace(", ", "\n", 1) for c in order], fontsize=6.5)
    acc_ax.set_ylabel("final " + plotting.ACC_LABEL)
    acc_ax.set_title("each setting, mean ± 95 % CI (n)")
    if diffs:
        diff_ax = axes[0][1]
        keys = [c for c in order if c in diffs]
        intervals.points(diff_ax, range(len(keys)), [diffs[c].mean for c in keys], [diffs[c].half for c in keys],
                         [diffs[c].n for c in keys], color="black")
        diff_ax.axhspan(-100 * delta, 100 * delta, color="tab:green", alpha=0.12, linewidth=0, label="± delta")
        diff_ax.axhline(0, color="0.3", linewidth=0.8)
        diff_ax.set_xticks(range(len(keys)), [names[c].replace(", ", "\n", 1) for c in keys], fontsize=6.5)
        diff_ax.set_ylabel("setting - AdamW, paired by seed (pp)")
        diff_ax.set_title("against AdamW (no settings pooled)")
        diff_ax.legend(fontsize=6.5)
    if flips:
        flip_ax = axes[0][-1]
        styles = iter(["-", "--", ":", "-."] * len(order))
        for cell, curve in flips.items():
            plotting.band(flip_ax, curve["epoch"], curve["mean"], curve["ci"], color=colors[cell],
                          linestyle=next(styles), label=f"{names[cell]} (n={int(curve['n'].max())})")
        plotting.log_axis(flip_ax, "y")
        plotting.epoch_axis(flip_ax)
        flip_ax.set_ylabel("flip ratio (fraction of weights / step)")
        flip_ax.set_title("flips per epoch (band: 95 % CI)")
        flip_ax.legend(fontsize=6)
    return plotting.save(fig, out_dir, NAME, caption + " · 95 % t-intervals over seeds")
