"""E3: initialization scale, with and without weight decay: flips and sign agreement with the init over steps,
forget step, final accuracy."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.cm as cm
import matplotlib.colors as mcolors
import numpy as np
import pandas as pd

from analysis import plotting
from analysis.experiments.common import ci_points, curve_ci, draw_frozen, frozen_control, n_text
from analysis.frame import Experiment, cell_stats, note_other_axes
from analysis.report import Section, num, pp
from analysis.stats import Interval, cell_intervals, difference, equivalence, margin, noise_floor, paired
from analysis.verdicts import INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED, Verdict, inconclusive_for_lack_of_data

KEY, NAME = "e3", "e3_init_scale"
TITLE = "E3 · initialization scale, with and without weight decay: delayed flips or a lasting effect?"
CLAIM = (
    "The latent init is the filter's initial state. With weight decay it is forgotten geometrically, so a larger "
    "init scale only delays the first flips, by about ln(scale)/alpha steps, and barely changes the final accuracy. "
    "Without weight decay the latent weight is a pure accumulator and the init is never forgotten."
)
SCALE, WD = "init.scale", "binary_opt.weight_decay"
MAX_BANDS = 6  # more init scales than this: mean lines only, the bands would hide each other
DECAY_CLAIM = "with weight decay, final accuracy does not depend on the init scale"
DECAY_RULE = (
    "for each weight decay > 0: paired-by-seed difference acc(largest init scale) - acc(smallest), final test "
    "accuracy, 95 % t-interval; noise = median seed std of the (scale, weight decay) cells, delta = max(0.5 pp, "
    "2 x noise). supported: every such difference 'same' (interval inside +-delta); not supported: any "
    "'different' (wholly outside); else inconclusive"
)
NO_DECAY_CLAIM = "without weight decay, a large init is never forgotten and costs accuracy"
NO_DECAY_RULE = (
    "weight decay 0: paired-by-seed difference acc(smallest init scale) - acc(largest), final test accuracy, "
    "95 % t-interval, same delta. supported: interval wholly above delta ('greater'); not supported: wholly below "
    "delta ('not greater'); else inconclusive"
)


def trained(experiment: Experiment) -> pd.DataFrame:
    """The runs whose binary weights are trained (a frozen control, if the grid holds one, is not a scale cell)."""
    return experiment.runs[experiment.runs["binary_opt.name"] != "frozen"]


def series(experiment: Experiment) -> pd.DataFrame:
    """Trained runs with their final forget step and first-epoch alpha."""
    runs = trained(experiment).copy()
    last_forget = experiment.curves.groupby("run_id")["init_forget_step"].last()
    runs["forget_step"] = runs["run_id"].map(last_forget)
    first_alpha = experiment.curves.sort_values("epoch").groupby("run_id")["alpha"].first()
    runs["alpha0"] = runs["run_id"].map(first_alpha)
    return runs


def label(wd: float) -> str:
    return "without weight decay" if wd == 0 else f"weight decay {plotting.sci(wd)}"


def extremes(group: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, float, float] | None:
    """(runs at the smallest scale, runs at the largest, the two scales), or None with fewer than 2 scales."""
    scales = sorted(group[SCALE].unique())
    if len(scales) < 2:
        return None
    return group[group[SCALE] == scales[0]], group[group[SCALE] == scales[-1]], scales[0], scales[-1]


def verdicts(experiment: Experiment) -> list[Verdict]:
    """The with-decay verdict (DECAY_RULE) and the without-decay verdict (NO_DECAY_RULE)."""
    runs = trained(experiment)
    noise = noise_floor(runs, [SCALE, WD])
    delta = margin(noise)
    return [_decay_verdict(runs, noise, delta), _no_decay_verdict(runs, noise, delta)]


def _decay_verdict(runs: pd.DataFrame, noise: float, delta: float) -> Verdict:
    readings, parts, diffs, seeds = [], [], [], set()
    for wd, group in runs[runs[WD] > 0].groupby(WD):
        ends = extremes(group)
        if ends is None:
            continue
        small, large, lo, hi = ends
        diff = paired(large, small)
        readings.append(equivalence(diff, delta))
        diffs.append(diff.mean)
        seeds |= set(small["seed"]) & set(large["seed"])
        parts.append(
            f"wd {plotting.sci(wd)}: scale {plotting.sci(hi)} - {plotting.sci(lo)} = {pp(diff.mean)} ± {pp(diff.half)}"
            f" (n={diff.n}, {readings[-1]})"
        )
    if not readings:
        return inconclusive_for_lack_of_data(KEY, DECAY_CLAIM, DECAY_RULE, "no weight decay > 0 with 2 init scales")
    if "different" in readings:
        verdict = NOT_SUPPORTED
    elif set(readings) == {"same"}:
        verdict = SUPPORTED
    else:
        verdict = INCONCLUSIVE
    value = max(diffs, key=abs)
    statistic = "paired difference acc(largest scale) - acc(smallest): " + "; ".join(parts) + f"; delta {pp(delta)}"
    return Verdict(KEY, DECAY_CLAIM, verdict, statistic, float(value), noise, len(seeds), DECAY_RULE)


def _no_decay_verdict(runs: pd.DataFrame, noise: float, delta: float) -> Verdict:
    ends = extremes(runs[runs[WD] == 0])
    if ends is None:
        return inconclusive_for_lack_of_data(KEY, NO_DECAY_CLAIM, NO_DECAY_RULE, "no weight decay 0 with 2 init scales")
    small, large, lo, hi = ends
    diff = paired(small, large)
    reading = difference(diff, delta)
    verdict = {"greater": SUPPORTED, "not greater": NOT_SUPPORTED}.get(reading, INCONCLUSIVE)
    statistic = (
        f"paired difference acc(scale {plotting.sci(lo)}) - acc(scale {plotting.sci(hi)}), weight decay 0: "
        f"{pp(diff.mean)} ± {pp(diff.half)} (n={diff.n}, {reading}); delta {pp(delta)}"
    )
    return Verdict(KEY, NO_DECAY_CLAIM, verdict, statistic, diff.mean, noise, diff.n, NO_DECAY_RULE)


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
    section.verdicts = verdicts(experiment)
    runs = series(experiment)
    if runs.empty:
        section.findings.append("no runs: nothing to draw")
        return section
    note_other_axes(experiment, runs, {SCALE, WD})
    for wd, group in runs.groupby(WD):
        forgot = int(np.isfinite(group["forget_step"]).sum())
        acc = cell_intervals(group, [SCALE])
        line = (
            f"{label(wd)}: init forgotten in **{forgot}** of {len(group)} runs; final accuracy across init scales "
            f"{plotting.sci(group[SCALE].min())} to {plotting.sci(group[SCALE].max())} "
            f"spans **{pp(acc['mean'].max() - acc['mean'].min())}** ("
            + ", ".join(
                f"{plotting.sci(s)}: {100 * m:.2f} ± {100 * h:.2f} % (n={n})" if math.isfinite(h) else
                f"{plotting.sci(s)}: {100 * m:.2f} % (n={n})"
                for s, m, h, n in zip(acc[SCALE], acc["mean"], acc["ci"], acc["n"])
            )
            + ")"
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
    control = frozen_control(experiment)
    if control is not None:
        section.findings.append(f"frozen control: {100 * control.mean:.2f} % (n={control.n})")
    section.caption = experiment.caption()
    section.figures = draw(experiment, runs, control, out_dir, section.caption, section)
    return section


def draw(
    experiment: Experiment, runs: pd.DataFrame, control: Interval | None, out_dir: Path, caption: str, section: Section
) -> list[Path]:
    decays = sorted(runs[WD].unique(), reverse=True)
    forget = runs[(runs[WD] > 0) & np.isfinite(runs["forget_step"])]
    if forget.empty:
        section.notices.append("no run forgot its init (no forget step): the forget-step panel is not drawn")
    fig, axes = plotting.figure(len(decays) + 1, 2, TITLE)
    scales = sorted(runs[SCALE].unique())
    norm = mcolors.LogNorm(min(scales), max(scales)) if len(scales) > 1 else mcolors.Normalize(0, 2 * scales[0])
    by_steps = bool(np.isfinite(experiment.curves["steps"]).all()) if len(experiment.curves) else False
    for column, wd in enumerate(decays):
        group = runs[runs[WD] == wd]
        for row, metric, ylabel in (
            (0, "flip_ratio", "flip ratio (fraction of weights / step)"),
            (1, "sign_agreement_init", "sign agreement with the init"),
        ):
            ax = axes[row, column]
            for scale, cell in group.groupby(SCALE):
                curve = curve_ci(experiment, cell["run_id"], metric)
                steps = experiment.curve(cell["run_id"], "steps")["mean"]
                x = steps if by_steps and len(steps) == len(curve) else curve["epoch"]
                plotting.band(
                    ax,
                    x,
                    curve["mean"],
                    curve["half"],
                    len(scales) <= MAX_BANDS,
                    color=cm.viridis(norm(scale)),
                    label=f"scale {plotting.sci(scale)} ({n_text(curve['count'])})",
                )
            if metric == "flip_ratio":
                plotting.log_axis(ax, "y")
            ax.set_xlabel("optimizer steps" if by_steps else "epoch")
            ax.set_ylabel(ylabel)
            ax.set_title(f"{metric.replace('_', ' ')}, {label(wd)}")
            ax.legend(fontsize=6.5)
    acc_ax = axes[0, len(decays)]
    for wd in decays:
        acc = cell_intervals(runs[runs[WD] == wd], [SCALE])
        ci_points(
            acc_ax,
            acc[SCALE],
            acc["mean"] * 100,
            acc["ci"] * 100,
            color="tab:gray" if wd == 0 else None,
            label=f"{label(wd)} ({n_text(acc['n'])})",
        )
    draw_frozen(acc_ax, control)
    plotting.log_axis(acc_ax, "x")
    acc_ax.set_xlabel("init scale (log)")
    acc_ax.set_ylabel("final " + plotting.ACC_LABEL)
    acc_ax.set_title("final accuracy, 95 % interval")
    acc_ax.legend(fontsize=7)
    forget_ax = axes[1, len(decays)]
    if len(forget):
        for wd, group in forget.groupby(WD):
            stats = cell_intervals(group, [SCALE], "forget_step")
            ci_points(forget_ax, stats[SCALE], stats["mean"], stats["ci"], label=f"{label(wd)} ({n_text(stats['n'])})")
        plotting.log_axis(forget_ax, "x")
        forget_ax.set_xlim(acc_ax.get_xlim())
        forget_ax.set_xlabel("init scale (log)")
        forget_ax.set_ylabel("init forget step (optimizer steps)")
        forget_ax.set_title("flip delay (runs that never forgot: not shown)")
        forget_ax.legend(fontsize=7)
    else:
        forget_ax.set_visible(False)
    spread = "bands and bars: 95 % t-interval over seeds" if len(scales) <= MAX_BANDS else "bars: 95 % t-interval"
    return plotting.save(fig, out_dir, NAME, f"{caption} · {spread} (none for n=1)")
