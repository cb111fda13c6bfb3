"""E4: latent momentum and the filter's gamma, side by side on the mapped gamma axis."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis import plotting
from analysis.experiments.common import run_means
from analysis.frame import Experiment, cell_stats, note_other_axes
from analysis.report import Section, pp

KEY, NAME = "e4", "e4_momentum_gamma"
TITLE = "E4 · momentum is the filter's gamma"
CLAIM = (
    "Momentum adds a second exponential moving average in front of the first: latent SGD with momentum mu is the "
    "filter with gamma close to 1 - mu (exactly: the larger root of the mapping). Momentum and gamma are one knob."
)


def readings(experiment: Experiment) -> pd.DataFrame:
    runs = experiment.runs[experiment.runs["binary_opt.name"].isin(["sgd", "filter"])].copy()
    runs["mapped_alpha"], runs["mapped_gamma"] = runs["filter_alpha"], runs["filter_gamma"]
    runs["mean_flip_ratio"] = runs["run_id"].map(run_means(experiment.curves, "flip_ratio"))
    note_other_axes(
        experiment, runs, {"binary_opt.name", "binary_opt.momentum", "binary_opt.gamma", "binary_opt.alpha"}
    )
    return runs[runs["mapped_gamma"] > 0]


def matched(stats: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Latent cells whose mapped (alpha, gamma) equals a filter cell's to 9 significant digits, with both accuracies."""
    if "sgd" not in stats or "filter" not in stats:
        return pd.DataFrame()
    keyed = {
        name: frame.assign(key=[f"{a:.9g}/{g:.9g}" for a, g in zip(frame["mapped_alpha"], frame["mapped_gamma"])])
        for name, frame in stats.items()
    }
    return keyed["sgd"].merge(keyed["filter"], on="key", suffixes=("_latent", "_filter"))


def analyse(experiment: Experiment, out_dir: Path) -> Section:
    section = Section(KEY, TITLE, CLAIM, notices=experiment.notices)
    runs = readings(experiment)
    if runs.empty:
        section.findings.append("no latent-SGD or filter runs with a gamma reading: nothing to draw")
        return section
    by = ["mapped_alpha", "mapped_gamma", "binary_opt.momentum"]
    stats = {}
    for name, group in runs.groupby("binary_opt.name"):
        acc = cell_stats(group, by)
        acc["flips"] = cell_stats(group, by, "mean_flip_ratio")["mean"]
        stats[name] = acc
    for name, acc in stats.items():
        best = acc.loc[acc["mean"].idxmax()]
        knob = (
            f"momentum {plotting.sci(best['binary_opt.momentum'])} (gamma {plotting.sci(best['mapped_gamma'])})"
            if name == "sgd"
            else f"gamma {plotting.sci(best['mapped_gamma'])}"
        )
        section.findings.append(
            f"{plotting.OPTIMIZER_LABELS[name]}: {len(acc)} settings, final accuracy spans "
            f"**{pp(acc['mean'].max() - acc['mean'].min())}**; best at {knob}: **{100 * best['mean']:.2f} %**"
        )
    pairs = matched(stats)
    if len(pairs):
        section.findings.append(
            f"{len(pairs)} latent settings have a filter cell at exactly their mapped (alpha, gamma): largest "
            f"|accuracy difference| **{pp((pairs['mean_latent'] - pairs['mean_filter']).abs().max())}**"
        )
    else:
        section.findings.append("no filter cell sits exactly at a latent setting's mapped (alpha, gamma)")
    section.caption = experiment.caption()
    section.figures = draw(stats, out_dir, section.caption)
    return section


def draw(stats: dict[str, pd.DataFrame], out_dir: Path, caption: str) -> list[Path]:
    fig, axes = plotting.figure(2, 1, TITLE)
    acc_ax, flip_ax = axes[0]
    for name, acc in stats.items():
        acc = acc.sort_values("mapped_gamma")
        color, marker = plotting.OPTIMIZER_COLORS[name], "o" if name == "sgd" else "s"
        text = "latent SGD (x = gamma mapped from momentum)" if name == "sgd" else "gradient filter (x = gamma)"
        acc_ax.errorbar(
            acc["mapped_gamma"],
            acc["mean"] * 100,
            yerr=(acc["std"] * 100).fillna(0),
            fmt=marker + "-",
            ms=4,
            capsize=2,
            color=color,
            label=text,
        )
        flip_ax.plot(acc["mapped_gamma"], acc["flips"], marker + "-", ms=4, color=color, label=text)
        if name == "sgd":
            for g, y, mu in zip(acc["mapped_gamma"], acc["mean"] * 100, acc["binary_opt.momentum"]):
                acc_ax.annotate(
                    f"μ={plotting.sci(mu)}",
                    (g, y),
                    textcoords="offset points",
                    xytext=(3, 5),
                    fontsize=6.5,
                    color=color,
                )
    for ax in (acc_ax, flip_ax):
        plotting.log_axis(ax, "x")
        ax.set_xlabel("gamma (log; latent: mapped from momentum μ, ≈ 1 − μ)")
        ax.legend(loc="best", fontsize=7)
    acc_ax.set_ylabel("final " + plotting.ACC_LABEL)
    acc_ax.set_title("accuracy against gamma")
    plotting.log_axis(flip_ax, "y")
    flip_ax.set_ylabel("mean flip ratio over epochs (fraction / step)")
    flip_ax.set_title("flips against gamma")
    return plotting.save(fig, out_dir, NAME, caption + " · error bars ±1 std over seeds")
