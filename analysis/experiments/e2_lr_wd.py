"""E2: final accuracy over the learning-rate x weight-decay grid; cells with equal products share alpha."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.cm as cm
import matplotlib.colors as mcolors
import numpy as np
import pandas as pd

from analysis import plotting
from analysis.experiments.common import ci_points, draw_frozen, frozen_control, n_text
from analysis.frame import Experiment, log_key, note_other_axes
from analysis.report import Section, pp
from analysis.stats import Interval, cell_intervals, difference, equivalence, margin, noise_floor, paired
from analysis.verdicts import INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED, Verdict, inconclusive_for_lack_of_data

KEY, NAME = "e2", "e2_lr_wd"
TITLE = "E2 · learning rate x weight decay: does only their product act?"
CLAIM = (
    "With weight decay, latent SGD is an exponential moving average of the gradients with rate "
    "alpha = learning rate x weight decay, so cells on one iso-alpha diagonal of the learning-rate x weight-decay "
    "grid train alike (once the init is forgotten): accuracy varies across diagonals, not along them."
)
LR, WD, SCALE = "binary_opt.lr", "binary_opt.weight_decay", "init.scale"
# alpha x T below UNFORGOTTEN: the init has shrunk by less than 1/e by the end; above FORGOTTEN: by e^-10.
UNFORGOTTEN, FORGOTTEN = 1.0, 10.0
PRODUCT_CLAIM = "lr and wd act only through alpha = lr x wd (default init, forgotten)"
PRODUCT_RULE = (
    "default-init cells; noise = median seed std of the cells, delta = max(0.5 pp, 2 x noise); for each "
    "iso-alpha diagonal with >= 2 cells, the paired-by-seed difference of its highest- minus lowest-mean cell, "
    "read with its 95 % t-interval: 'same' inside +-delta, 'different' wholly outside; and the paired-by-seed "
    "difference best - worst diagonal (diagonal mean per seed): 'greater' when its interval lies above delta "
    "(the test has power: alpha itself acts). supported: every diagonal 'same' and across 'greater'; "
    "not supported: some diagonal 'different'; else inconclusive"
)
LARGE_CLAIM = "with a large init that alpha x T cannot forget, equal products differ"
LARGE_RULE = (
    "cells at the larger init scale; per iso-alpha diagonal with >= 2 such cells, the paired-by-seed difference "
    "highest- minus lowest-mean cell against the same delta as above; unforgotten diagonals: alpha x T < "
    f"{UNFORGOTTEN:g}, forgotten: alpha x T >= {FORGOTTEN:g} (T = optimizer steps of the runs). supported: every "
    "unforgotten diagonal 'different' and every forgotten one 'same'; not supported: an unforgotten diagonal "
    "'same'; else inconclusive (also when no unforgotten diagonal has 2 cells)"
)


def sgd_runs(experiment: Experiment) -> pd.DataFrame:
    """Runs of the experiment's optimizer (the most common one) with wd > 0, with their diagonal (log10 lr*wd)."""
    runs = experiment.runs
    names = runs["binary_opt.name"].value_counts()
    runs = runs[(runs["binary_opt.name"] == names.index[0]) & (runs[WD] > 0)]
    return runs.assign(diagonal=[log_key(lr * wd) for lr, wd in zip(runs[LR], runs[WD])], alpha=runs[LR] * runs[WD])


def split_init(runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, float]:
    """(default-init runs, larger-init runs, default scale): the default is the scale most runs hold."""
    if runs.empty:
        return runs, runs, math.nan
    counts = runs[SCALE].value_counts()
    default = float(counts[counts == counts.max()].index.min())
    return runs[runs[SCALE] == default], runs[runs[SCALE] > default], default


def noise_of(runs: pd.DataFrame) -> float:
    return noise_floor(runs, ["cell"]) if "cell" in runs.columns else noise_floor(runs, [LR, WD, SCALE])


def diagonal_tests(runs: pd.DataFrame, delta: float) -> pd.DataFrame:
    """Per diagonal with >= 2 cells: the paired difference highest- minus lowest-mean cell and its reading."""
    rows = []
    for diagonal, group in runs.groupby("diagonal", sort=True):
        cells = cell_intervals(group, [LR, WD])
        if len(cells) < 2:
            continue
        hi, lo = cells.loc[cells["mean"].idxmax()], cells.loc[cells["mean"].idxmin()]
        pick = lambda c: group[(group[LR] == c[LR]) & (group[WD] == c[WD])]  # noqa: E731
        diff = paired(pick(hi), pick(lo))
        steps = group["final_steps"].median() if "final_steps" in group.columns else math.nan
        rows.append(
            {
                "diagonal": diagonal,
                "alpha": 10.0**diagonal,
                "alpha_T": 10.0**diagonal * steps,
                "cells": len(cells),
                "high": f"lr {plotting.sci(hi[LR])} · wd {plotting.sci(hi[WD])}",
                "low": f"lr {plotting.sci(lo[LR])} · wd {plotting.sci(lo[WD])}",
                "diff": diff.mean,
                "half": diff.half,
                "n": diff.n,
                "reading": equivalence(diff, delta),
            }
        )
    return pd.DataFrame(
        rows, columns=["diagonal", "alpha", "alpha_T", "cells", "high", "low", "diff", "half", "n", "reading"]
    )


def across(runs: pd.DataFrame) -> Interval:
    """Paired-by-seed difference best - worst diagonal (by mean of cell means), each seed's diagonal mean."""
    cells = cell_intervals(runs, ["diagonal", LR, WD])
    means = cells.groupby("diagonal")["mean"].mean()
    if len(means) < 2:
        return Interval(math.nan, math.nan, 0)
    per_seed = runs.groupby(["diagonal", "seed"])["final_test_acc"].mean().reset_index()
    best, worst = per_seed[per_seed["diagonal"] == means.idxmax()], per_seed[per_seed["diagonal"] == means.idxmin()]
    return paired(best, worst)


def verdicts(experiment: Experiment) -> list[Verdict]:
    """The product verdict (PRODUCT_RULE) and the large-init verdict (LARGE_RULE)."""
    runs = sgd_runs(experiment)
    default, large, _ = split_init(runs)
    noise = noise_of(runs)
    delta = margin(noise)
    return [_product_verdict(default, noise, delta), _large_verdict(large, noise, delta)]


def _product_verdict(default: pd.DataFrame, noise: float, delta: float) -> Verdict:
    tests = diagonal_tests(default, delta)
    if tests.empty:
        return inconclusive_for_lack_of_data(KEY, PRODUCT_CLAIM, PRODUCT_RULE, "no diagonal with 2 default-init cells")
    spread = across(default)
    spread_reading = difference(spread, delta)
    readings = set(tests["reading"])
    if "different" in readings:
        verdict = NOT_SUPPORTED
    elif readings == {"same"} and spread_reading == "greater":
        verdict = SUPPORTED
    else:
        verdict = INCONCLUSIVE
    worst = tests.loc[tests["diff"].abs().idxmax()]
    statistic = (
        f"largest paired within-diagonal difference (alpha {plotting.sci(worst['alpha'])}: {worst['high']} - "
        f"{worst['low']}; readings: "
        + ", ".join(f"{plotting.sci(a)} {r}" for a, r in zip(tests["alpha"], tests["reading"]))
        + f"); across diagonals best - worst {pp(spread.mean)} ± {pp(spread.half)} ({spread_reading})"
        + f"; delta {pp(delta)}"
    )
    n_seeds = int(default["seed"].nunique())
    return Verdict(KEY, PRODUCT_CLAIM, verdict, statistic, float(worst["diff"]), noise, n_seeds, PRODUCT_RULE)


def _large_verdict(large: pd.DataFrame, noise: float, delta: float) -> Verdict:
    tests = diagonal_tests(large, delta)
    unforgotten = tests[tests["alpha_T"] < UNFORGOTTEN]
    forgotten = tests[tests["alpha_T"] >= FORGOTTEN]
    if unforgotten.empty:
        return inconclusive_for_lack_of_data(
            KEY, LARGE_CLAIM, LARGE_RULE, f"no diagonal with 2 large-init cells at alpha x T < {UNFORGOTTEN:g}"
        )
    if (unforgotten["reading"] == "same").any():
        verdict = NOT_SUPPORTED
    elif (unforgotten["reading"] == "different").all() and (forgotten["reading"] == "same").all():
        verdict = SUPPORTED
    else:
        verdict = INCONCLUSIVE
    key = unforgotten.loc[unforgotten["diff"].abs().idxmin()]
    statistic = (
        f"smallest paired within-diagonal difference among unforgotten large-init diagonals (alpha "
        f"{plotting.sci(key['alpha'])}, alpha x T {key['alpha_T']:.3g}: {key['high']} - {key['low']}); readings: "
        + ", ".join(f"alpha x T {t:.3g} {r}" for t, r in zip(tests["alpha_T"], tests["reading"]))
        + f"; delta {pp(delta)}"
    )
    n_seeds = int(large["seed"].nunique())
    return Verdict(KEY, LARGE_CLAIM, verdict, statistic, float(key["diff"]), noise, n_seeds, LARGE_RULE)


def analyse(experiment: Experiment, out_dir: Path) -> Section:
    section = Section(KEY, TITLE, CLAIM, notices=experiment.notices)
    names = experiment.runs["binary_opt.name"].value_counts()
    if len(names) > 1:
        also = ", ".join(names.index[1:])
        section.notices.append(f"only binary_opt.name = {names.index[0]} drawn (also present: {also})")
    zero = experiment.runs[experiment.runs[WD] <= 0]
    if len(zero):
        section.notices.append(f"{len(zero)} run(s) with weight decay 0 have no alpha and are not drawn")
    runs = sgd_runs(experiment)
    section.verdicts = verdicts(experiment)
    if runs.empty:
        section.findings.append("no runs with weight decay > 0: nothing to draw")
        return section
    default, large, scale = split_init(runs)
    note_other_axes(experiment, default, {LR, WD})
    noise = noise_of(runs)
    delta = margin(noise)
    stats = cell_intervals(default, [LR, WD])
    stats["diagonal"] = [log_key(lr * wd) for lr, wd in zip(stats[LR], stats[WD])]
    diag = stats.groupby("diagonal")["mean"]
    ranges = diag.agg(lambda v: v.max() - v.min())[diag.size() >= 2]
    along = float(ranges.mean()) if len(ranges) else math.nan
    best = stats.loc[stats["mean"].idxmax()]
    section.findings += [
        f"default init (scale {plotting.sci(scale)}): {len(stats)} cells on {diag.ngroups} iso-alpha diagonals, "
        f"{len(ranges)} of them holding 2 or more cells",
        f"accuracy spread along a diagonal (mean of max - min): **{pp(along)}**; "
        f"across diagonals (max - min of diagonal means): **{pp(diag.mean().max() - diag.mean().min())}**",
        f"seed noise (median seed std of a cell): **{pp(noise)}**; equivalence margin delta **{pp(delta)}**",
        f"highest mean cell (test accuracy shown, no selection made on it): lr {plotting.sci(best[LR])}, weight decay "
        f"{plotting.sci(best[WD])} (alpha {plotting.sci(best[LR] * best[WD])}): **{100 * best['mean']:.2f} %** "
        f"(n={int(best['n'])})",
    ]
    tests = {"default init": diagonal_tests(default, delta), "large init": diagonal_tests(large, delta)}
    for name, frame in tests.items():
        for row in frame.itertuples(index=False):
            section.findings.append(
                f"{name}, alpha {plotting.sci(row.alpha)} (alpha x T {row.alpha_T:.3g}): {row.high} - {row.low} = "
                f"{pp(row.diff)} ± {pp(row.half)} (n={row.n}) → {row.reading}"
            )
    control = frozen_control(experiment)
    if control is not None:
        section.findings.append(f"frozen control: {100 * control.mean:.2f} % (n={control.n})")
    section.caption = experiment.caption()
    section.figures = draw(stats, default, large, tests, delta, control, out_dir, section.caption, section)
    return section


def draw(
    stats: pd.DataFrame,
    default: pd.DataFrame,
    large: pd.DataFrame,
    tests: dict[str, pd.DataFrame],
    delta: float,
    control: Interval | None,
    out_dir: Path,
    caption: str,
    section: Section,
) -> list[Path]:
    has_tests = any(len(frame) for frame in tests.values())
    fig, axes = plotting.figure(3 if has_tests else 2, 1, TITLE)
    left, middle = axes[0, 0], axes[0, 1]
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
    left.set_title(f"default init, mean over seeds ({n_text(stats['n'])})\ndashed: η·λ = const")
    all_lrs = sorted(set(stats[LR]) | set(large[LR]))
    norm = mcolors.LogNorm(min(all_lrs), max(all_lrs)) if len(all_lrs) > 1 else None
    for frame, marker, what in ((default, "o", ""), (large, "s", ", large init")):
        if frame.empty:
            continue
        cells = cell_intervals(frame, [LR, WD])
        for lr, group in cells.groupby(LR):
            color = cm.plasma(norm(lr) * 0.85) if norm else "tab:blue"
            group = group.assign(alpha=group[LR] * group[WD]).sort_values("alpha")
            # cells of one diagonal share an x: set each learning rate slightly apart so the bars stay readable
            dodge = 10 ** (0.04 * (all_lrs.index(lr) - (len(all_lrs) - 1) / 2))
            ci_points(
                middle,
                group["alpha"] * dodge,
                group["mean"] * 100,
                group["ci"] * 100,
                line=False,
                marker=marker,
                color=color,
                label=f"η = {plotting.sci(lr)}{what} ({n_text(group['n'])})",
            )
    draw_frozen(middle, control)
    plotting.log_axis(middle, "x")
    middle.set_xlabel("alpha = η·λ (log)")
    middle.set_ylabel("final " + plotting.ACC_LABEL)
    middle.set_title(
        "each cell at its alpha (η set slightly apart)\n95 % interval; circles: default, squares: large init"
    )
    middle.legend(fontsize=6.5, ncol=2 if len(all_lrs) > 3 else 1)
    if has_tests:
        right = axes[0, 2]
        right.axhspan(-100 * delta, 100 * delta, color="tab:green", alpha=0.12, linewidth=0, label="±delta")
        right.axhline(0, color="0.5", linewidth=0.8)
        for (name, frame), color, shift in zip(tests.items(), ("tab:blue", "tab:red"), (0.94, 1.06)):
            if frame.empty:
                continue
            ci_points(
                right,
                frame["alpha"] * shift,
                frame["diff"] * 100,
                frame["half"] * 100,
                line=False,
                color=color,
                label=f"{name} ({n_text(frame['n'])})",
            )
        plotting.log_axis(right, "x")
        right.set_xlabel("alpha = η·λ of the diagonal (log)")
        right.set_ylabel("paired difference, highest - lowest cell (pp)")
        right.set_title("within-diagonal paired differences\n95 % interval; band: ±delta")
        right.legend(fontsize=7)
    else:
        section.notices.append("no diagonal holds 2 cells: the within-diagonal difference panel is not drawn")
    return plotting.save(fig, out_dir, NAME, caption + " · error bars: 95 % t-interval over seeds (none for n=1)")
