"""E6: constant, linear, cosine and step decay of the learning rate, read as alpha schedules: the exact pair
(latent SGD without momentum, the filter at gamma 1 from the mapped state), flips per epoch, final accuracy."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import plotting
from analysis.experiments import intervals
from analysis.frame import Experiment
from analysis.report import Section, ci, markdown_table, num, pp
from analysis.stats import Interval, cell_intervals, difference, equivalence, margin, noise_floor, paired
from analysis.verdicts import INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED, Verdict

KEY, NAME = "e6", "e6_schedules"
TITLE = "E6 · learning-rate schedules read as alpha schedules: one optimizer, and do flips die out?"
CLAIM = (
    "A learning-rate schedule eta_t is exactly an alpha schedule alpha_t = eta_t x weight decay: latent SGD "
    "without momentum and the filter at gamma 1 from the mapped state are one optimizer under any schedule. "
    "Decaying alpha lengthens the filter's memory, so flips die out as alpha falls."
)
PAIR_CLAIM = "under every schedule, latent SGD (momentum 0) and its exactly mapped filter (gamma 1) are one optimizer"
FLIP_CLAIM = "decaying schedules end with a lower flip ratio than the constant one"
SCHEDULE, OPTIMIZER = "schedule.name", "binary_opt.name"
ACC = "final_test_acc"
ORDER = ("constant", "linear", "cosine", "step")
COLORS = dict(zip(ORDER, ("tab:gray", "tab:blue", "tab:purple", "tab:orange")))
PAIR_RULE = (
    "pairs: latent SGD with momentum 0 and the filter with gamma 1 and alpha = lr x weight decay, same schedule "
    "and seed. noise = median seed std of all cells, delta = max(0.5 pp, 2 x noise). Per schedule, the paired "
    "difference sgd - filter of final_test_acc reads `same` (95 % CI inside +-delta), `different` (wholly "
    "outside) or `unclear`. supported: every schedule reads `same`; not supported: any reads `different`; "
    "otherwise (or no schedule with >= 2 paired seeds) inconclusive."
)
FLIP_RULE = (
    "per optimizer and decaying schedule (every schedule but constant), the paired (by seed) difference of the "
    "last-epoch flip_ratio, constant - decayed, reads `greater` (95 % CI above 0), `not greater` (CI below 0) or "
    "`unclear`. supported: every one reads `greater`; not supported: any reads `not greater`; else inconclusive."
)


def ordered(names: list[str]) -> list[str]:
    return [n for n in ORDER if n in names] + sorted(set(names) - set(ORDER))


def per_run(experiment: Experiment) -> pd.DataFrame:
    """The runs with their last-epoch flip ratio, and which side of the exact pair they are (or None)."""
    runs = experiment.runs.copy()
    last = experiment.curves.sort_values("epoch").groupby("run_id")["flip_ratio"].last()
    runs["last_flip_ratio"] = runs["run_id"].map(last)
    is_sgd = (runs[OPTIMIZER] == "sgd") & (runs["binary_opt.momentum"] == 0) & (runs["binary_opt.weight_decay"] > 0)
    is_filter = (runs[OPTIMIZER] == "filter") & np.isclose(runs["binary_opt.gamma"].astype(float), 1.0)
    runs["side"] = np.where(is_sgd, "sgd", np.where(is_filter, "filter", None))
    return runs


def pairs(runs: pd.DataFrame) -> dict[str, Interval]:
    """Schedule -> paired difference sgd - filter of final test accuracy, where alpha = lr x wd matches."""
    out = {}
    for schedule in ordered(list(runs[SCHEDULE].unique())):
        here = runs[runs[SCHEDULE] == schedule]
        sgd, filt = here[here["side"] == "sgd"], here[here["side"] == "filter"]
        if sgd.empty or filt.empty:
            continue
        alphas = set(np.round(np.log10(sgd["binary_opt.lr"] * sgd["binary_opt.weight_decay"]), 6))
        filt = filt[np.round(np.log10(filt["binary_opt.alpha"].astype(float)), 6).isin(alphas)]
        if len(filt):
            out[schedule] = paired(sgd, filt, ACC)
    return out


def flip_drops(runs: pd.DataFrame) -> dict[tuple[str, str], Interval]:
    """(optimizer, decayed schedule) -> paired difference constant - decayed of the last-epoch flip ratio."""
    out = {}
    for optimizer, group in runs.groupby(OPTIMIZER):
        constant = group[group[SCHEDULE] == "constant"]
        if constant.empty:
            continue
        for schedule in ordered(list(group[SCHEDULE].unique())):
            if schedule != "constant":
                out[(optimizer, schedule)] = paired(constant, group[group[SCHEDULE] == schedule], "last_flip_ratio")
    return out


def verdicts(experiment: Experiment) -> list[Verdict]:
    runs = per_run(experiment)
    noise = noise_floor(runs, ["cell"], ACC)
    delta = margin(noise)
    found = {s: d for s, d in pairs(runs).items() if d.n >= 2}
    readings = {s: equivalence(d, delta) for s, d in found.items()}
    if not found:
        pair = Verdict(KEY, PAIR_CLAIM, INCONCLUSIVE, "no schedule with >= 2 paired seeds", math.nan, noise, 0,
                       PAIR_RULE)
    else:
        values = list(readings.values())
        verdict = (
            SUPPORTED if all(v == "same" for v in values)
            else NOT_SUPPORTED if "different" in values
            else INCONCLUSIVE
        )
        worst = max(found.values(), key=lambda d: abs(d.mean))
        statistic = "largest |paired sgd - filter| over schedules (" + ", ".join(
            f"{s}: {r}" for s, r in readings.items()) + ")"
        pair = Verdict(KEY, PAIR_CLAIM, verdict, statistic, abs(worst.mean), noise,
                       min(d.n for d in found.values()), PAIR_RULE)
    drops = flip_drops(runs)
    flip_readings = {k: difference(d, 0.0) for k, d in drops.items()}
    if not drops:
        flip = Verdict(KEY, FLIP_CLAIM, INCONCLUSIVE, "no constant and decayed schedules to compare", math.nan,
                       math.nan, 0, FLIP_RULE)
    else:
        values = list(flip_readings.values())
        verdict = (
            SUPPORTED if all(v == "greater" for v in values)
            else NOT_SUPPORTED if "not greater" in values
            else INCONCLUSIVE
        )
        smallest = min(drops.values(), key=lambda d: d.mean if math.isfinite(d.mean) else math.inf)
        statistic = "smallest paired last-epoch flip ratio constant - decayed (" + ", ".join(
            f"{o} {s}: {r}" for (o, s), r in flip_readings.items()) + ")"
        flip = Verdict(KEY, FLIP_CLAIM, verdict, statistic, smallest.mean, math.nan,
                       min(d.n for d in drops.values()), FLIP_RULE)
    return [pair, flip]


def analyse(experiment: Experiment, out_dir: Path) -> Section:
    section = Section(KEY, TITLE, CLAIM, notices=experiment.notices)
    runs = per_run(experiment)
    section.verdicts = verdicts(experiment)
    noise = noise_floor(runs, ["cell"], ACC)
    acc = cell_intervals(runs, [OPTIMIZER, SCHEDULE, "cell"], ACC)
    flips = cell_intervals(runs, [OPTIMIZER, SCHEDULE, "cell"], "last_flip_ratio")
    found = pairs(runs)
    for schedule, diff in found.items():
        section.findings.append(
            f"{schedule}: exact pair sgd - filter, paired: **{pp(diff.mean)}** ± {pp(diff.half)} (n={diff.n}) "
            f"-> {equivalence(diff, margin(noise))} at delta {pp(margin(noise))}"
        )
    if not found:
        section.findings.append("no exact pair (sgd momentum 0 beside the filter at gamma 1, same alpha) in these runs")
    for (optimizer, schedule), diff in flip_drops(runs).items():
        section.findings.append(
            f"{plotting.OPTIMIZER_LABELS.get(optimizer, optimizer)}: last-epoch flip ratio constant - {schedule}: "
            f"**{num(diff.mean, 3)}** ± {num(diff.half, 2)} (n={diff.n})"
        )
    section.tables.append(
        markdown_table(
            pd.DataFrame(
                {
                    "optimizer": [plotting.OPTIMIZER_LABELS.get(o, o) for o in acc[OPTIMIZER]],
                    "schedule": acc[SCHEDULE],
                    "final test accuracy": [ci(m, h, n) for m, h, n in zip(acc["mean"], acc["ci"], acc["n"])],
                    "last-epoch flip ratio": [
                        f"{num(m, 3)} ± {num(h, 2)}" if math.isfinite(h) else num(m, 3)
                        for m, h in zip(flips["mean"], flips["ci"])
                    ],
                }
            )
        )
    )
    section.caption = experiment.caption()
    section.figures = draw(experiment, runs, acc, found, margin(noise), out_dir, section.caption)
    return section


def draw(
    experiment: Experiment,
    runs: pd.DataFrame,
    acc: pd.DataFrame,
    found: dict[str, Interval],
    delta: float,
    out_dir: Path,
    caption: str,
) -> list[Path]:
    schedules = ordered(list(runs[SCHEDULE].unique()))
    optimizers = sorted(runs[OPTIMIZER].unique())
    curves = {}
    for optimizer in optimizers:
        for name in schedules:
            ids = runs.loc[(runs[SCHEDULE] == name) & (runs[OPTIMIZER] == optimizer), "run_id"]
            curve = intervals.epoch_intervals(experiment.curves, ids, "flip_ratio")
            if len(curve) and np.isfinite(curve["mean"]).any():
                curves[(optimizer, name)] = curve
    if not curves:
        experiment.notices.append("no flip-ratio curves for these runs: no flips panel")
    fig, axes = plotting.figure(bool(curves) + 1 + bool(found), 1, TITLE)
    acc_ax = axes[0][1 if curves else 0]
    if curves:
        flip_ax = axes[0][0]
        for (optimizer, name), curve in curves.items():
            label = f"{name}, {plotting.OPTIMIZER_LABELS.get(optimizer, optimizer)} (n={int(curve['n'].max())})"
            style = "--" if optimizer == "filter" else "-"
            plotting.band(flip_ax, curve["epoch"], curve["mean"], curve["ci"], color=COLORS.get(name),
                          linestyle=style, label=label)
        plotting.log_axis(flip_ax, "y")
        plotting.epoch_axis(flip_ax)
        flip_ax.set_ylabel("flip ratio (fraction of weights / step)")
        flip_ax.set_title("flips per epoch (band: 95 % CI)")
        flip_ax.legend(fontsize=6)
    x = np.arange(len(schedules))
    width = 0.8 / max(len(optimizers), 1)
    for k, optimizer in enumerate(optimizers):
        rows = acc[acc[OPTIMIZER] == optimizer]
        xs = [x[schedules.index(s)] + (k - (len(optimizers) - 1) / 2) * width for s in rows[SCHEDULE]]
        intervals.points(
            acc_ax, xs, rows["mean"], rows["ci"], rows["n"],
            color=plotting.OPTIMIZER_COLORS.get(optimizer), label=plotting.OPTIMIZER_LABELS.get(optimizer, optimizer),
        )
    if intervals.control_band(acc_ax, experiment.control()) is None:
        experiment.notices.append("no frozen control runs of this preset and dataset/model: no control band")
    acc_ax.set_xticks(x, schedules)
    acc_ax.set_ylabel("final " + plotting.ACC_LABEL)
    acc_ax.set_title("final accuracy, mean ± 95 % CI")
    acc_ax.legend(fontsize=6.5)
    if found:
        pair_ax = axes[0][-1]
        names = list(found)
        intervals.points(pair_ax, range(len(names)), [found[s].mean for s in names], [found[s].half for s in names],
                         [found[s].n for s in names], color="black")
        pair_ax.axhspan(-100 * delta, 100 * delta, color="tab:green", alpha=0.12, linewidth=0, label="± delta")
        pair_ax.axhline(0, color="0.3", linewidth=0.8)
        pair_ax.set_xticks(range(len(names)), names)
        pair_ax.set_ylabel("sgd - filter, paired by seed (pp)")
        pair_ax.set_title("the exact pair, per schedule")
        pair_ax.legend(fontsize=6.5)
    return plotting.save(fig, out_dir, NAME, caption + " · solid: latent, dashed: filter; 95 % t-intervals over seeds")
