"""E3: initialization scale, with and without weight decay: flips over steps, forget step, final accuracy."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.cm as cm
import matplotlib.colors as mcolors
import numpy as np
import pandas as pd

from analysis import plotting
from analysis.frame import Experiment, cell_stats, note_other_axes
from analysis.report import Section, num, pp

KEY, NAME = "e3", "e3_init_scale"
TITLE = "E3 · a large initialization only delays flips, unless there is no weight decay"
CLAIM = (
    "The latent init is the filter's initial state. With weight decay it is forgotten geometrically, so a larger "
    "init scale only delays the first flips, by about ln(scale)/alpha steps, and barely changes the final accuracy. "
    "Without weight decay the latent weight is a pure accumulator and the init is never forgotten."
)
SCALE, WD = "init.scale", "binary_opt.weight_decay"
MAX_BANDS = 6  # more init scales than this: mean lines only, the bands would hide each other


def series(experiment: Experiment) -> pd.DataFrame:
    """Finished runs with init scale > 0, with per-run final forget step and a series label per weight decay."""
    runs = experiment.runs
    zero = runs[runs[SCALE] <= 0]
    if len(zero):
        experiment.notices.append(f"{len(zero)} run(s) with init scale 0 cannot sit on the log axis and are not drawn")
    runs = runs[runs[SCALE] > 0].copy()
    note_other_axes(experiment, runs, {SCALE, WD})
    last_forget = experiment.curves.groupby("run_id")["init_forget_step"].last()
    runs["forget_step"] = runs["run_id"].map(last_forget)
    first_alpha = experiment.curves.sort_values("epoch").groupby("run_id")["alpha"].first()
    runs["alpha0"] = runs["run_id"].map(first_alpha)
    return runs


def label(wd: float) -> str:
    return "without weight decay" if wd == 0 else f"weight decay {plotting.sci(wd)}"


def forget_slope(runs: pd.DataFrame) -> float:
    """Least-squares slope of the cell-mean forget step against ln(init scale), over cells where every seed forgot."""
    stats = cell_stats(runs, [SCALE], "forget_step")
    stats = stats[stats["n"] == runs.groupby(SCALE).size().reindex(stats[SCALE]).to_numpy()]
    stats = stats[np.isfinite(stats["mean"])]
    if len(stats) < 2:
        return math.nan
    return float(np.polyfit(np.log(stats[SCALE].to_numpy()), stats["mean"].to_numpy(), 1)[0])


def analyse(experiment: Experiment, out_dir: Path) -> Section:
    section = Section(KEY, TITLE, CLAIM, notices=experiment.notices)
    runs = series(experiment)
    if runs.empty:
        section.findings.append("no runs with init scale > 0: nothing to draw")
        return section
    for wd, group in runs.groupby(WD):
        forgot = int(np.isfinite(group["forget_step"]).sum())
        acc = cell_stats(group, [SCALE])
        line = (
            f"{label(wd)}: init forgotten in **{forgot}** of {len(group)} runs; final accuracy across init scales "
            f"{plotting.sci(group[SCALE].min())} to {plotting.sci(group[SCALE].max())} "
            f"spans **{pp(acc['mean'].max() - acc['mean'].min())}**"
        )
        if wd > 0:
            slope, alpha = forget_slope(group), float(group["alpha0"].mean())
            line += (
                f"; the forget step grows by **{num(slope)}** steps per e-fold of init scale "
                f"(theory 1/alpha = {num(1 / alpha) if alpha > 0 else 'n/a'})"
            )
        else:
            agreement = cell_stats(group, [SCALE], "final_sign_agreement_init")["mean"]
            line += (
                f"; final sign agreement with the init: **{num(agreement.min(), 3)}** to **{num(agreement.max(), 3)}**"
            )
        section.findings.append(line)
    section.caption = experiment.caption()
    section.figures = draw(experiment, runs, out_dir, section.caption)
    return section


def draw(experiment: Experiment, runs: pd.DataFrame, out_dir: Path, caption: str) -> list[Path]:
    decays = sorted(runs[WD].unique(), reverse=True)
    fig, axes = plotting.figure(max(2, len(decays)), 2, TITLE)
    scales = sorted(runs[SCALE].unique())
    norm = mcolors.LogNorm(min(scales), max(scales)) if len(scales) > 1 else mcolors.Normalize(0, 2 * scales[0])
    for column, wd in enumerate(decays):
        ax = axes[0, column]
        group = runs[runs[WD] == wd]
        for scale, cell in group.groupby(SCALE):
            flips = experiment.curve(cell["run_id"], "flip_ratio")
            steps = experiment.curve(cell["run_id"], "steps")["mean"]
            x = steps if np.isfinite(steps).all() else flips["epoch"]
            plotting.band(ax, x, flips["mean"], flips["std"], len(scales) <= MAX_BANDS, color=cm.viridis(norm(scale)))
        plotting.log_axis(ax, "y")
        ax.set_xlabel("optimizer steps" if np.isfinite(runs["final_steps"]).all() else "epoch")
        ax.set_ylabel("flip ratio (fraction of weights / step)")
        ax.set_title(f"flips, {label(wd)}")
        plotting.colorbar(fig, cm.ScalarMappable(norm=norm, cmap="viridis"), ax, "init scale (log)")
    for column in range(len(decays), axes.shape[1]):
        axes[0, column].set_visible(False)
    forget_ax, acc_ax = axes[1, 0], axes[1, 1]
    for wd in decays:
        group = runs[runs[WD] == wd]
        color = "tab:gray" if wd == 0 else None
        stats = cell_stats(group, [SCALE], "forget_step")
        ok = np.isfinite(stats["mean"])
        if ok.any():
            forget_ax.errorbar(
                stats[SCALE][ok],
                stats["mean"][ok],
                yerr=stats["std"][ok].fillna(0),
                fmt="o-",
                ms=4,
                capsize=2,
                color=color,
                label=label(wd),
            )
        acc = cell_stats(group, [SCALE])
        acc_ax.errorbar(
            acc[SCALE],
            acc["mean"] * 100,
            yerr=(acc["std"] * 100).fillna(0),
            fmt="o-",
            ms=4,
            capsize=2,
            color=color,
            label=label(wd),
        )
    plotting.log_axis(forget_ax, "x")
    forget_ax.set_xlabel("init scale (log)")
    forget_ax.set_ylabel("init forget step (optimizer steps)")
    forget_ax.set_title("flip delay (never forgot: not shown)")
    plotting.log_axis(acc_ax, "x")
    acc_ax.set_xlabel("init scale (log)")
    acc_ax.set_ylabel("final " + plotting.ACC_LABEL)
    acc_ax.set_title("final accuracy")
    forget_ax.set_xlim(acc_ax.get_xlim())  # the same init-scale axis below both
    for ax in (forget_ax, acc_ax):
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    for row in range(2):
        for column in range(2, axes.shape[1]):
            if row == 1:
                axes[row, column].set_visible(False)
    spread = "bands and bars ±1 std over seeds" if len(scales) <= MAX_BANDS else "bars ±1 std over seeds"
    return plotting.save(fig, out_dir, NAME, f"{caption} · {spread}")
