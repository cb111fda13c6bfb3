"""E6: constant, linear, cosine and step decay of alpha (= of the learning rate): flips per epoch, accuracy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from analysis import plotting
from analysis.frame import Experiment, cell_stats, note_other_axes
from analysis.report import Section, markdown_table, num, pm

KEY, NAME = "e6", "e6_schedules"
TITLE = "E6 · the learning-rate schedule is an alpha schedule"
CLAIM = (
    "A learning-rate schedule eta_t is exactly an alpha schedule alpha_t = eta_t x weight decay. Decaying alpha "
    "lengthens the filter's memory, so flips die out as alpha falls and the signs settle; the schedule's shape "
    "sets how fast."
)
SCHEDULE, OPTIMIZER = "schedule.name", "binary_opt.name"
ORDER = ("constant", "linear", "cosine", "step")
COLORS = dict(zip(ORDER, ("tab:gray", "tab:blue", "tab:purple", "tab:orange")))
STYLES = {"filter": "--", "bop": ":"}  # latent optimizers solid


def per_run(experiment: Experiment) -> pd.DataFrame:
    runs = experiment.runs.copy()
    optimizer_fields = {name for name in runs.columns if name.startswith("binary_opt.")}
    note_other_axes(experiment, runs, {SCHEDULE, "schedule.step_epochs", "schedule.step_factor"} | optimizer_fields)
    last = experiment.curves.sort_values("epoch").groupby("run_id")["flip_ratio"].last()
    runs["last_flip_ratio"] = runs["run_id"].map(last)
    return runs


def ordered(names: list[str]) -> list[str]:
    return [n for n in ORDER if n in names] + sorted(set(names) - set(ORDER))


def analyse(experiment: Experiment, out_dir: Path) -> Section:
    section = Section(KEY, TITLE, CLAIM, notices=experiment.notices)
    runs = per_run(experiment)
    acc = cell_stats(runs, [OPTIMIZER, SCHEDULE]).set_index([OPTIMIZER, SCHEDULE])
    flips = cell_stats(runs, [OPTIMIZER, SCHEDULE], "last_flip_ratio").set_index([OPTIMIZER, SCHEDULE])
    optimizers = sorted(runs[OPTIMIZER].unique())
    schedules = ordered(list(runs[SCHEDULE].unique()))
    for optimizer in optimizers:
        names = [s for s in schedules if (optimizer, s) in acc.index]
        best = max(names, key=lambda n: acc.loc[(optimizer, n), "mean"])
        label = plotting.OPTIMIZER_LABELS.get(optimizer, optimizer)
        section.findings.append(
            f"{label}: best final accuracy with the **{best}** schedule "
            f"({pm(acc.loc[(optimizer, best), 'mean'], acc.loc[(optimizer, best), 'std'])}); "
            "last-epoch flip ratio " + ", ".join(f"{n} **{num(flips.loc[(optimizer, n), 'mean'], 3)}**" for n in names)
        )
    rows = [(o, s) for o in optimizers for s in schedules if (o, s) in acc.index]
    section.tables.append(
        markdown_table(
            pd.DataFrame(
                {
                    "optimizer": [plotting.OPTIMIZER_LABELS.get(o, o) for o, _ in rows],
                    "schedule": [s for _, s in rows],
                    "seeds": [int(acc.loc[r, "n"]) for r in rows],
                    "final test accuracy": [pm(acc.loc[r, "mean"], acc.loc[r, "std"]) for r in rows],
                    "last-epoch flip ratio": [num(flips.loc[r, "mean"], 3) for r in rows],
                }
            )
        )
    )
    section.caption = experiment.caption()
    section.figures = draw(experiment, runs, optimizers, schedules, acc, out_dir, section.caption)
    return section


def draw(
    experiment: Experiment,
    runs: pd.DataFrame,
    optimizers: list[str],
    schedules: list[str],
    acc: pd.DataFrame,
    out_dir: Path,
    caption: str,
) -> list[Path]:
    fig, axes = plotting.figure(3, 1, TITLE)
    rate_ax, flip_ax, acc_ax = axes[0]
    for optimizer in optimizers:
        style = STYLES.get(optimizer, "-")
        for name in schedules:
            ids = runs.loc[(runs[SCHEDULE] == name) & (runs[OPTIMIZER] == optimizer), "run_id"]
            if ids.empty:
                continue
            label = f"{name}, {plotting.OPTIMIZER_LABELS.get(optimizer, optimizer)}"
            alpha = experiment.curve(ids, "alpha")
            rate = alpha if np.isfinite(alpha["mean"]).any() else experiment.curve(ids, "lr")
            rate_ax.plot(rate["epoch"], rate["mean"], "o" + style, ms=3, color=COLORS.get(name), label=label)
            flips = experiment.curve(ids, "flip_ratio")
            plotting.band(
                flip_ax,
                flips["epoch"],
                flips["mean"],
                flips["std"],
                color=COLORS.get(name),
                linestyle=style,
                label=label,
            )
    plotting.log_axis(rate_ax, "y")
    rate_ax.set_ylabel("alpha_t during the epoch (log)")
    rate_ax.set_title("the schedule, read as alpha")
    plotting.log_axis(flip_ax, "y")
    flip_ax.set_ylabel("flip ratio (fraction of weights / step)")
    flip_ax.set_title("flips per epoch")
    for ax in (rate_ax, flip_ax):
        plotting.epoch_axis(ax)
    rate_ax.legend(fontsize=6.5)
    width = 0.8 / len(optimizers)
    x = np.arange(len(schedules))
    tops, bottoms = [], []
    for k, optimizer in enumerate(optimizers):
        rows = [(optimizer, s) for s in schedules]
        means = np.array([acc.loc[r, "mean"] * 100 if r in acc.index else np.nan for r in rows])
        stds = np.nan_to_num(np.array([acc.loc[r, "std"] * 100 if r in acc.index else np.nan for r in rows]))
        acc_ax.bar(
            x + (k - (len(optimizers) - 1) / 2) * width,
            means,
            width * 0.95,
            yerr=stds,
            capsize=2,
            color=[COLORS.get(s, "tab:blue") for s in schedules],
            hatch="//" if optimizer == "filter" else None,
            edgecolor="white",
            label=plotting.OPTIMIZER_LABELS.get(optimizer, optimizer),
        )
        tops.append(np.nanmax(means + stds))
        bottoms.append(np.nanmin(means - stds))
    acc_ax.set_xticks(x, schedules)
    low, high = min(bottoms), max(tops)
    margin = max(0.5, (high - low) * 0.5)
    acc_ax.set_ylim(max(0.0, low - margin), min(100.0, high + margin))
    acc_ax.set_ylabel("final " + plotting.ACC_LABEL + " (axis cut)")
    acc_ax.set_title("final accuracy (hatched: filter)")
    return plotting.save(
        fig, out_dir, NAME, caption + " · solid: latent, dashed: filter; bands and bars ±1 std over seeds"
    )
