"""E8: latent Adam, latent SGD, Bop and the gradient filter beside the frozen control, per dataset/model:
mean ± 95 % CI over seeds at the last epoch and at the epoch chosen on validation, beside published numbers."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import plotting
from analysis.experiments import intervals
from analysis.frame import Experiment
from analysis.reference import REFERENCES, references_for
from analysis.report import Section, ci, markdown_table, pp
from analysis.stats import Interval, cell_intervals, margin, noise_floor, paired
from analysis.verdicts import INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED, Verdict

KEY, NAME = "e8", "e8_optimizers"
TITLE = "E8 · optimizers beside the frozen control"
CLAIM = (
    "The gradient filter trains binary networks in one step and matches latent-weight optimizers with fewer, "
    "interpretable hyperparameters. Published references: "
    + "; ".join(f"{r.what} on {r.dataset}: {r.top1} %" for r in REFERENCES)
    + "."
)
ORDER = ("adam", "sgd", "bop", "filter", "frozen")
BASELINES = ("adam", "sgd", "bop")
ACC, VAL, AT_VAL = "final_test_acc", "final_val_acc", "test_acc_at_best_val"
GROUP = ["data.name", "model.label", "binary_opt.name", "cell"]
LABELS = {**plotting.OPTIMIZER_LABELS, "frozen": "frozen control"}
_NAME_OF_LABEL = {label: name for name, label in LABELS.items()}
RULE = (
    "per dataset/model: the filter cell and the best baseline cell (latent Adam, latent SGD or Bop), each chosen "
    "on validation (highest mean final_val_acc); noise = median seed std of that context's cells, delta = "
    "max(0.5 pp, 2 x noise). The paired (by seed) difference filter - baseline of final_test_acc: 95 % CI lower "
    "bound > -delta -> supported (non-inferior); upper bound < -delta -> not supported; otherwise (or < 2 paired "
    "seeds) inconclusive."
)


def setting(row: pd.Series) -> str:
    """The optimizer's own hyperparameters, short, as the table's setting column."""
    sci = plotting.sci
    name = row["binary_opt.name"]
    if name == "frozen":
        return "binary weights never trained"
    if name == "sgd":
        return (
            f"lr {sci(row['binary_opt.lr'])}, wd {sci(row['binary_opt.weight_decay'])}, "
            f"momentum {sci(row['binary_opt.momentum'])}"
        )
    if name == "adam":
        return (
            f"lr {sci(row['binary_opt.lr'])}, wd {sci(row['binary_opt.weight_decay'])} "
            f"({row['binary_opt.decay_mode']}), "
            f"beta2 {sci(row['binary_opt.beta2'])}, eps {sci(row['binary_opt.eps'])}"
        )
    if name == "bop":
        return f"gamma {sci(row['binary_opt.gamma'])}, threshold {sci(row['binary_opt.threshold'])}"
    return f"alpha {sci(row['binary_opt.alpha'])}, gamma {sci(row['binary_opt.gamma'])}"


def binary_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs that train a binary network: a step-1 run (real weights) is not one; only its step 2 is shown."""
    if "stage" in runs.columns:
        return runs[runs["stage"] != "step1"]
    return runs


def table(experiment: Experiment) -> pd.DataFrame:
    """One row per (dataset, model, optimizer cell): accuracies in percent, unrounded; references beside."""
    runs = binary_runs(experiment.runs)
    final = cell_intervals(runs, GROUP, ACC)
    at_val = cell_intervals(runs, GROUP, AT_VAL)
    val = cell_intervals(runs, GROUP, VAL)
    first = runs.drop_duplicates("cell").set_index("cell")
    rows = []
    for f, b, v in zip(final.itertuples(index=False), at_val.itertuples(index=False), val.itertuples(index=False)):
        row = dict(zip(GROUP, f[: len(GROUP)]))
        refs = references_for(row["data.name"], row["binary_opt.name"], row["model.label"])
        rows.append(
            {
                "dataset": row["data.name"],
                "model": row["model.label"],
                "optimizer": LABELS.get(row["binary_opt.name"], row["binary_opt.name"]),
                "setting": setting(first.loc[row["cell"]]),
                "seeds": int(f.n),
                "final_test_acc_mean": f.mean * 100,
                "final_test_acc_std": f.std * 100,
                "final_test_acc_ci": f.ci * 100,
                "test_acc_at_best_val_mean": b.mean * 100,
                "test_acc_at_best_val_ci": b.ci * 100,
                "final_val_acc_mean": v.mean * 100,
                "reference_top1": "; ".join(f"{r.top1}" for r in refs),
                "reference": "; ".join(r.what for r in refs),
                "_order": ORDER.index(row["binary_opt.name"]) if row["binary_opt.name"] in ORDER else len(ORDER),
            }
        )
    frame = pd.DataFrame(rows).sort_values(["dataset", "model", "_order", "setting"], kind="stable")
    return frame.drop(columns="_order").reset_index(drop=True)


def markdown(frame: pd.DataFrame) -> str:
    def cis(means: pd.Series, halves: pd.Series, ns: pd.Series) -> list[str]:
        return [ci(m / 100, h / 100, int(n)).replace(" %", "") for m, h, n in zip(means, halves, ns)]

    return markdown_table(
        pd.DataFrame(
            {
                "dataset": frame["dataset"],
                "model": frame["model"],
                "optimizer": frame["optimizer"],
                "setting": frame["setting"],
                "last-epoch test acc (%)": cis(
                    frame["final_test_acc_mean"], frame["final_test_acc_ci"], frame["seeds"]
                ),
                "test acc at epoch chosen on val (%)": cis(
                    frame["test_acc_at_best_val_mean"], frame["test_acc_at_best_val_ci"], frame["seeds"]
                ),
                "reference top-1 (%)": [
                    f"{v} ({w})" if v else "—" for v, w in zip(frame["reference_top1"], frame["reference"])
                ],
            }
        )
    )


def chosen(runs: pd.DataFrame, names: tuple[str, ...]) -> pd.DataFrame:
    """The runs of the cell with the highest mean validation accuracy among optimizers ``names`` (may be empty)."""
    candidates = runs[runs["binary_opt.name"].isin(names)]
    if candidates.empty:
        return candidates
    best = candidates.groupby("cell")[VAL].mean().idxmax()
    return candidates[candidates["cell"] == best]


def comparison(runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, Interval, float]:
    """(filter runs, best baseline runs, paired filter - baseline, noise) of one dataset/model context."""
    filt, base = chosen(runs, ("filter",)), chosen(runs, BASELINES)
    diff = paired(filt, base, ACC) if len(filt) and len(base) else Interval(math.nan, math.nan, 0)
    return filt, base, diff, noise_floor(runs, ["cell"], ACC)


def verdicts(experiment: Experiment) -> list[Verdict]:
    out = []
    for (dataset, model), runs in binary_runs(experiment.runs).groupby(["data.name", "model.label"], sort=True):
        claim = f"the filter matches or beats the best baseline ({dataset} · {model})"
        filt, base, diff, noise = comparison(runs)
        if filt.empty or base.empty:
            why = "no gradient-filter runs" if filt.empty else "no baseline runs"
            out.append(Verdict(KEY, claim, INCONCLUSIVE, why, math.nan, noise, 0, RULE))
            continue
        delta = margin(noise)
        if diff.n < 2 or not math.isfinite(diff.half):
            verdict = INCONCLUSIVE
        elif diff.low > -delta:
            verdict = SUPPORTED
        elif diff.high < -delta:
            verdict = NOT_SUPPORTED
        else:
            verdict = INCONCLUSIVE
        baseline = LABELS.get(base["binary_opt.name"].iloc[0], base["binary_opt.name"].iloc[0])
        statistic = f"paired difference filter - {baseline} (chosen on validation), final test accuracy"
        out.append(Verdict(KEY, claim, verdict, statistic, diff.mean, noise, diff.n, RULE))
    return out


def analyse(experiment: Experiment, out_dir: Path, tables_dir: Path) -> Section:
    section = Section(KEY, TITLE, CLAIM, notices=experiment.notices)
    section.verdicts = verdicts(experiment)
    frame = table(experiment)
    tables_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = tables_dir / f"{NAME}.csv", tables_dir / f"{NAME}.md"
    frame.to_csv(csv_path, index=False, float_format="%.6f")
    md = markdown(frame)
    md_path.write_text(
        f"# {TITLE}\n\n{md}\n\n{experiment.caption()} · mean ± 95 % t-interval over seeds (n). "
        "References: analysis/reference.py (model, training steps and source of each), set beside results of "
        "the same dataset and model only.\n"
    )
    for (dataset, model), runs in binary_runs(experiment.runs).groupby(["data.name", "model.label"], sort=True):
        filt, base, diff, noise = comparison(runs)
        refs = references_for(dataset, model=model)
        text = f"{dataset} · {model}: "
        if len(filt) and len(base):
            baseline = LABELS.get(base["binary_opt.name"].iloc[0])
            text += (
                f"best baseline on validation: {baseline}; filter - {baseline}, paired: **{pp(diff.mean)}** ± "
                f"{pp(diff.half)} (n={diff.n}; margin delta {pp(margin(noise))})"
            )
        else:
            text += "no filter-against-baseline comparison (one side absent)"
        frozen = runs[runs["binary_opt.name"] == "frozen"]
        if frozen.empty:  # no control in this grid: the frozen runs of the same preset and context elsewhere
            frozen = experiment.control(dataset, model)
        if len(frozen) and len(filt):
            gap = paired(filt, frozen, ACC)
            text += (
                f"; frozen control {ci(*_mean_ci(frozen))}: filter - frozen **{pp(gap.mean)}** ± {pp(gap.half)} "
                f"(n={gap.n}; the control must be far below, else the testbed cannot tell optimizers apart)"
            )
        else:
            text += "; no frozen control in this context"
        text += (
            f"; published: {', '.join(f'{r.what} {r.top1} %' for r in refs)}"
            if refs
            else "; no published reference for this dataset and model"
        )
        section.findings.append(text)
    section.tables.append(md)
    section.caption = experiment.caption()
    section.figures = draw(frame, out_dir, section.caption) + [csv_path, md_path]
    return section


def _mean_ci(runs: pd.DataFrame) -> tuple[float, float, int]:
    stats = cell_intervals(runs.assign(_all=0), ["_all"], ACC).iloc[0]
    return float(stats["mean"]), float(stats["ci"]), int(stats["n"])


def draw(frame: pd.DataFrame, out_dir: Path, caption: str) -> list[Path]:
    contexts = list(frame.groupby(["dataset", "model"], sort=True))
    fig, axes = plotting.figure(len(contexts), 1, TITLE)
    for ax, ((dataset, model), group) in zip(axes[0], contexts):
        x = np.arange(len(group))
        names = [_NAME_OF_LABEL.get(label, label) for label in group["optimizer"]]
        for xi, name, (_, row) in zip(x, names, group.iterrows()):
            color = intervals.FROZEN_COLOR if name == "frozen" else plotting.OPTIMIZER_COLORS.get(name, "tab:gray")
            intervals.points(
                ax, [xi - 0.12], [row["final_test_acc_mean"] / 100], [row["final_test_acc_ci"] / 100],
                [row["seeds"]], color=color,
            )
            intervals.points(
                ax, [xi + 0.12], [row["test_acc_at_best_val_mean"] / 100], [row["test_acc_at_best_val_ci"] / 100],
                [row["seeds"]], color=color, marker="s", alpha=0.6,
            )
        ax.set_xticks(x, [o.replace(" ", "\n", 1) for o in group["optimizer"]])
        for r in references_for(dataset, model=model):
            ax.axhline(r.top1, color="0.3", linestyle=":", linewidth=1)
            ax.text(x[-1] + 0.45, r.top1, f"{r.what}: {r.top1}", ha="right", va="bottom", fontsize=6.5, color="0.3")
        ax.set_ylabel(plotting.ACC_LABEL)
        ax.set_title(f"{dataset} · {model}")
    legend = (
        " · circles: last epoch, squares: epoch chosen on validation; bars: 95 % t-interval over seeds (hollow: "
        "n=1); dotted: published references"
    )
    return plotting.save(fig, out_dir, NAME, caption + legend)
