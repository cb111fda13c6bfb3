"""E1: latent SGD (momentum, weight decay) and the gradient filter with the mapped alpha/gamma, paired by seed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from analysis import plotting
from analysis.experiments.common import curve_ci, n_text
from analysis.frame import CELL_FIELDS, Experiment, row_keys
from analysis.report import Section, markdown_table, num, pp
from analysis.verdicts import INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED, Verdict

KEY, NAME = "e1", "e1_equivalence"
TITLE = "E1 · latent SGD vs the gradient filter at the mapped (alpha, gamma): same sign trajectories?"
CLAIM = (
    "SGD with momentum and weight decay on latent weights is a cascade of two exponential moving averages of the "
    "gradients; the sign of the latent weight is the sign of the filter output. With alpha and gamma mapped from "
    "(learning rate, weight decay, momentum) both optimizers give identical sign trajectories, accuracy and flip "
    "curves."
)
VERDICT_CLAIM = "latent SGD and the exactly mapped filter from the same init give identical sign trajectories"
MIN_PAIRS = 2
RULE = (
    "count the (pair, epoch) whose epoch-end sign vectors differ (sign_hash; epochs where either hash is missing "
    "are not compared), over all pairs (latent SGD run, filter run at its mapped alpha/gamma, same setting and "
    f"seed); not supported: any mismatch; supported: 0 mismatches over >= {MIN_PAIRS} pairs with compared "
    f"epochs; inconclusive: 0 mismatches but fewer than {MIN_PAIRS} such pairs"
)
MAX_PANELS = 4
_OPTIMIZER_FIELDS = {name for name in CELL_FIELDS if name.startswith("binary_opt.")}


def pairs(experiment: Experiment) -> pd.DataFrame:
    """One row per (latent SGD run, filter run) with the same seed, context and mapped (alpha, gamma); the latent
    run's columns plus run_id_filter and final_test_acc_filter."""
    runs = experiment.runs
    runs = runs[runs["binary_opt.name"].isin(["sgd", "filter"])]
    keyed = runs.assign(
        pair_alpha=runs["filter_alpha"].map(lambda v: float(f"{v:.12g}")),
        pair_gamma=runs["filter_gamma"].map(lambda v: float(f"{v:.12g}")),
    )
    context = [name for name in CELL_FIELDS if name not in _OPTIMIZER_FIELDS] + ["seed", "pair_alpha", "pair_gamma"]
    keyed = keyed.assign(pair_key=row_keys(keyed, context))
    latent = keyed[keyed["binary_opt.name"] == "sgd"]
    filt = keyed[keyed["binary_opt.name"] == "filter"][["pair_key", "run_id", "final_test_acc"]]
    merged = latent.merge(filt, on="pair_key", suffixes=("", "_filter"))
    return (
        merged.rename(columns={"run_id": "run_id_latent"})
        .sort_values(["pair_alpha", "pair_gamma", "binary_opt.lr", "seed"])
        .reset_index(drop=True)
    )


def compare(experiment: Experiment, pair_rows: pd.DataFrame) -> pd.DataFrame:
    """Per pair: epochs compared (both hashes present), epochs whose sign_hash differs, max |delta| of test
    accuracy and flip ratio over epochs, and the final test accuracy difference latent - filter."""
    columns = ["compared", "mismatches", "max_dacc", "max_dflip", "final_dacc"]
    if pair_rows.empty:
        return pair_rows.assign(**{c: pd.Series(dtype=float) for c in columns})
    curves = experiment.curves.set_index("run_id")
    out = []
    for row in pair_rows.itertuples(index=False):
        a = curves.loc[curves.index == row.run_id_latent].set_index("epoch")
        b = curves.loc[curves.index == row.run_id_filter].set_index("epoch")
        common = a.index.intersection(b.index)
        a, b = a.loc[common], b.loc[common]
        hashed = a["sign_hash"].notna().to_numpy() & b["sign_hash"].notna().to_numpy()
        out.append(
            {
                "compared": int(hashed.sum()),
                "mismatches": int((a["sign_hash"].to_numpy()[hashed] != b["sign_hash"].to_numpy()[hashed]).sum()),
                "max_dacc": float(np.nanmax(np.abs(a["test_acc"] - b["test_acc"]))) if len(common) else np.nan,
                "max_dflip": float(np.nanmax(np.abs(a["flip_ratio"] - b["flip_ratio"]))) if len(common) else np.nan,
                "final_dacc": float(row.final_test_acc - row.final_test_acc_filter),
            }
        )
    return pd.concat([pair_rows.reset_index(drop=True), pd.DataFrame(out, columns=columns)], axis=1)


def verdicts(experiment: Experiment) -> list[Verdict]:
    """The sign-trajectory verdict (RULE) from the experiment's frames alone."""
    return [_verdict(compare(experiment, pairs(experiment)))]


def _verdict(compared: pd.DataFrame) -> Verdict:
    usable = compared[compared["compared"] > 0]
    mismatches = int(usable["mismatches"].sum())
    n_seeds = int(usable["seed"].nunique()) if len(usable) else 0
    if mismatches > 0:
        verdict = NOT_SUPPORTED
    elif len(usable) >= MIN_PAIRS:
        verdict = SUPPORTED
    else:
        verdict = INCONCLUSIVE
    statistic = (
        f"(pair, epoch) with differing sign_hash, over {len(usable)} pairs and "
        f"{int(usable['compared'].sum())} compared epochs"
    )
    return Verdict(KEY, VERDICT_CLAIM, verdict, statistic, float(mismatches), np.nan, n_seeds, RULE)


def analyse(experiment: Experiment, out_dir: Path) -> Section:
    section = Section(KEY, TITLE, CLAIM, notices=experiment.notices)
    compared = compare(experiment, pairs(experiment))
    section.verdicts = [_verdict(compared)]
    if compared.empty:
        section.findings.append(
            "no latent-SGD run has a filter run with the same seed and mapped alpha/gamma: nothing to compare"
        )
        return section
    total, mismatched = int(compared["compared"].sum()), int(compared["mismatches"].sum())
    section.findings += [
        f"{len(compared)} pairs (latent SGD, filter with mapped alpha/gamma, same seed): "
        f"**{mismatched}** of **{total}** epoch-end sign vectors differ (sign_hash)",
        f"pairs with identical signs at every epoch: **{int((compared['mismatches'] == 0).sum())}** of {len(compared)}",
        f"largest |paired final test accuracy difference| (latent - filter, same seed): "
        f"**{pp(compared['final_dacc'].abs().max())}**; largest at any epoch: **{pp(compared['max_dacc'].max())}**; "
        f"largest |flip ratio difference|: **{num(compared['max_dflip'].max(), 3)}**",
    ]
    if "dtype" in compared.columns:
        section.findings.append(f"arithmetic: {', '.join(sorted(map(str, compared['dtype'].unique())))}")
    settings = compared.groupby(["pair_alpha", "pair_gamma"], sort=True)
    table = settings.agg(
        lr=("binary_opt.lr", "first"),
        wd=("binary_opt.weight_decay", "first"),
        mu=("binary_opt.momentum", "first"),
        pairs=("seed", "size"),
        compared=("compared", "sum"),
        mismatches=("mismatches", "sum"),
        max_dacc=("max_dacc", "max"),
        final_dacc=("final_dacc", lambda v: v.abs().max()),
    ).reset_index()
    section.tables.append(
        markdown_table(
            pd.DataFrame(
                {
                    "lr": table["lr"].map(plotting.sci),
                    "weight decay": table["wd"].map(plotting.sci),
                    "momentum": table["mu"].map(plotting.sci),
                    "alpha": table["pair_alpha"].map(plotting.sci),
                    "gamma": table["pair_gamma"].map(plotting.sci),
                    "pairs (seeds)": table["pairs"],
                    "sign mismatches / epochs": [f"{m} / {e}" for m, e in zip(table["mismatches"], table["compared"])],
                    "max abs test-acc difference, any epoch": table["max_dacc"].map(pp),
                    "max abs final test-acc difference": table["final_dacc"].map(pp),
                }
            )
        )
    )
    section.caption = experiment.caption()
    section.figures = draw(experiment, compared, table, out_dir, section.caption, section)
    return section


def draw(
    experiment: Experiment, compared: pd.DataFrame, table: pd.DataFrame, out_dir: Path, caption: str, section: Section
) -> list[Path]:
    shown = table.head(MAX_PANELS)
    if len(table) > MAX_PANELS:
        section.notices.append(f"figure shows the first {MAX_PANELS} of {len(table)} settings (all are in the table)")
    fig, axes = plotting.figure(len(shown), 2, TITLE)
    for column, setting in enumerate(shown.itertuples(index=False)):
        rows = compared[(compared["pair_alpha"] == setting.pair_alpha) & (compared["pair_gamma"] == setting.pair_gamma)]
        for metric, ax in (("test_acc", axes[0, column]), ("flip_ratio", axes[1, column])):
            for kind, ids, style in (("sgd", rows["run_id_latent"], "-"), ("filter", rows["run_id_filter"], "--")):
                curve = curve_ci(experiment, ids, metric)
                scale = 100.0 if metric == "test_acc" else 1.0
                plotting.band(
                    ax,
                    curve["epoch"],
                    curve["mean"] * scale,
                    curve["half"] * scale,
                    linestyle=style,
                    color=plotting.OPTIMIZER_COLORS[kind],
                    label=f"{plotting.OPTIMIZER_LABELS[kind]} ({n_text(curve['count'])})",
                )
            plotting.epoch_axis(ax)
        axes[0, column].set_title(
            f"lr {plotting.sci(setting.lr)} · wd {plotting.sci(setting.wd)} · momentum {plotting.sci(setting.mu)}\n"
            f"= filter alpha {plotting.sci(setting.pair_alpha)} · gamma {plotting.sci(setting.pair_gamma)}\n"
            f"sign mismatches: {setting.mismatches} of {setting.compared} epochs ({setting.pairs} pairs)"
        )
        axes[0, column].set_ylabel(plotting.ACC_LABEL)
        axes[0, column].legend(loc="lower right")
        axes[1, column].set_ylabel("flip ratio (fraction of weights / step)")
        plotting.log_axis(axes[1, column], "y")
    legend = " · solid: latent SGD, dashed: filter; bands: 95 % t-interval over seeds (none for n=1)"
    return plotting.save(fig, out_dir, NAME, caption + legend)
