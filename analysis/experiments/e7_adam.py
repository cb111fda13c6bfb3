"""E7: latent Adam's beta2/eps and L2 vs decoupled weight decay, against the gradient filter's reading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from analysis import plotting
from analysis.frame import Experiment, cell_stats, note_other_axes
from analysis.report import Section, pm, pp

KEY, NAME = "e7", "e7_adam"
TITLE = "E7 · Adam: beta2, eps and the kind of weight decay, against the filter"
CLAIM = (
    "In Adam, beta1 plays gamma's role; beta2 and eps only rescale each weight's gradient non-linearly, so Adam is "
    "not an exact linear filter, and the filter optimizer drops them. L2 decay inside the gradient and decoupled "
    "decay (AdamW) are different algorithms."
)
BETA2, EPS, MODE = "binary_opt.beta2", "binary_opt.eps", "binary_opt.decay_mode"


def filter_setting(cell: pd.Series) -> str:
    return f"alpha {plotting.sci(cell['binary_opt.alpha'])}, gamma {plotting.sci(cell['binary_opt.gamma'])}"


def analyse(experiment: Experiment, out_dir: Path) -> Section:
    section = Section(KEY, TITLE, CLAIM, notices=experiment.notices)
    runs = experiment.runs
    adam, filt = runs[runs["binary_opt.name"] == "adam"], runs[runs["binary_opt.name"] == "filter"]
    if adam.empty:
        section.findings.append("no latent-Adam runs: nothing to draw")
        return section
    note_other_axes(experiment, adam, {BETA2, EPS, MODE})
    cells = cell_stats(adam, [MODE, BETA2, EPS])
    modes = cell_stats(adam, [MODE]).set_index(MODE)
    for mode, group in cells.groupby(MODE):
        best = group.loc[group["mean"].idxmax()]
        pooled = pm(modes.loc[mode, "mean"], modes.loc[mode, "std"])
        section.findings.append(
            f"Adam, {mode} decay: {len(group)} (beta2, eps) setting(s), final accuracy spans "
            f"**{pp(group['mean'].max() - group['mean'].min())}**; over all of them **{pooled}**; "
            f"best beta2 {plotting.sci(best[BETA2])}, eps {plotting.sci(best[EPS])}: **{100 * best['mean']:.2f} %**"
        )
    if len(modes) == 2:
        section.findings.append(
            "decoupled minus L2 (means over all settings): "
            f"**{pp(modes.loc['decoupled', 'mean'] - modes.loc['l2', 'mean'])}**"
        )
    reference = None
    if len(filt):
        reference = cell_stats(filt, ["binary_opt.alpha", "binary_opt.gamma"])
        ref = reference.loc[reference["mean"].idxmax()]
        section.findings.append(
            f"gradient filter ({filter_setting(ref)}): **{pm(ref['mean'], ref['std'])}**; "
            f"best Adam setting minus filter: **{pp(cells['mean'].max() - ref['mean'])}**"
        )
    else:
        section.findings.append("no gradient-filter runs in this grid to read Adam against")
    section.caption = experiment.caption()
    section.figures = draw(experiment, adam, filt, cells, reference, out_dir, section.caption)
    return section


def draw(
    experiment: Experiment,
    adam: pd.DataFrame,
    filt: pd.DataFrame,
    cells: pd.DataFrame,
    reference: pd.DataFrame | None,
    out_dir: Path,
    caption: str,
) -> list[Path]:
    fig, axes = plotting.figure(3, 1, TITLE)
    sweep_ax, mode_ax, flip_ax = axes[0]
    use_eps = cells[EPS].nunique() > 1 or cells[BETA2].nunique() == 1
    x_field, other = (EPS, BETA2) if use_eps else (BETA2, EPS)
    styles = {"l2": "-", "decoupled": "--"}
    palette = iter(["tab:orange", "tab:brown", "tab:olive", "tab:purple", "tab:pink", "tab:cyan", "tab:gray"] * 9)
    for (mode, value), group in cells.groupby([MODE, other]):
        group = group.sort_values(x_field)
        x = group[x_field] if use_eps else 1 - group[x_field]
        sweep_ax.errorbar(
            x,
            group["mean"] * 100,
            yerr=(group["std"] * 100).fillna(0),
            fmt="o" + styles.get(mode, ":"),
            ms=4,
            capsize=2,
            color=next(palette),
            label=f"{mode}, {'beta2' if use_eps else 'eps'} {plotting.sci(value)}",
        )
    if reference is not None:
        ref = reference.loc[reference["mean"].idxmax()]
        sweep_ax.axhline(
            ref["mean"] * 100,
            color=plotting.OPTIMIZER_COLORS["filter"],
            linewidth=1.2,
            label=f"filter, {filter_setting(ref)}",
        )
        if np.isfinite(ref["std"]):
            sweep_ax.axhspan(
                (ref["mean"] - ref["std"]) * 100,
                (ref["mean"] + ref["std"]) * 100,
                color=plotting.OPTIMIZER_COLORS["filter"],
                alpha=0.15,
            )
    plotting.log_axis(sweep_ax, "x")
    sweep_ax.set_xlabel("Adam eps (log)" if use_eps else "1 − beta2 (log)")
    sweep_ax.set_ylabel("final " + plotting.ACC_LABEL)
    sweep_ax.set_title("Adam's normalisation settings")
    sweep_ax.legend(fontsize=6.5)
    groups = [(f"Adam {mode}", adam[adam[MODE] == mode]) for mode in sorted(adam[MODE].unique())]
    if len(filt):
        groups.append(("filter", filt))
    means = [g["final_test_acc"].mean() * 100 for _, g in groups]
    stds = [g["final_test_acc"].std() * 100 if len(g) > 1 else 0 for _, g in groups]
    colors = [plotting.OPTIMIZER_COLORS["filter" if name == "filter" else "adam"] for name, _ in groups]
    mode_ax.bar(range(len(groups)), means, yerr=stds, capsize=3, color=colors)
    mode_ax.set_xticks(range(len(groups)), [name for name, _ in groups])
    low, high = min(m - s for m, s in zip(means, stds)), max(m + s for m, s in zip(means, stds))
    margin = max(0.5, (high - low) * 0.5)
    mode_ax.set_ylim(max(0.0, low - margin), min(100.0, high + margin))
    mode_ax.set_ylabel("final " + plotting.ACC_LABEL + " (axis cut)")
    mode_ax.set_title("L2 vs decoupled (settings pooled)")
    for (name, group), color in zip(groups, colors):
        curve = experiment.curve(group["run_id"], "flip_ratio")
        plotting.band(
            flip_ax,
            curve["epoch"],
            curve["mean"],
            curve["std"],
            color=color,
            linestyle="--" if "decoupled" in name else "-",
            label=name,
        )
    plotting.log_axis(flip_ax, "y")
    plotting.epoch_axis(flip_ax)
    flip_ax.set_ylabel("flip ratio (fraction of weights / step)")
    flip_ax.set_title("flips per epoch")
    flip_ax.legend()
    return plotting.save(fig, out_dir, NAME, caption + " · bars and bands ±1 std over runs")
