"""E8: latent Adam, latent SGD, Bop and the gradient filter, per dataset/model, beside published numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from analysis import plotting
from analysis.frame import Experiment, cell_stats
from analysis.reference import REFERENCES, references_for
from analysis.report import Section, markdown_table, pm

KEY, NAME = "e8", "e8_optimizers"
TITLE = "E8 · optimizer comparison"
CLAIM = (
    "The gradient filter trains binary networks in one step and matches latent-weight optimizers with fewer, "
    "interpretable hyperparameters. Published references: "
    + "; ".join(f"{r.what} on {r.dataset}: {r.top1} %" for r in REFERENCES)
    + "."
)
ORDER = ("adam", "sgd", "bop", "filter")
GROUP = ["data.name", "model.label", "binary_opt.name", "cell"]
_NAME_OF_LABEL = {label: name for name, label in plotting.OPTIMIZER_LABELS.items()}


def setting(row: pd.Series) -> str:
    """The optimizer's own hyperparameters, short, as the table's setting column."""
    sci = plotting.sci
    name = row["binary_opt.name"]
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


def table(experiment: Experiment) -> pd.DataFrame:
    """One row per (dataset, model, optimizer cell): accuracies in percent, unrounded; references beside."""
    runs = experiment.runs
    if "stage" in runs.columns:  # a step-1 run (real weights) is not a binary network: only its step 2 is shown
        runs = runs[runs["stage"] != "step1"]
    final = cell_stats(runs, GROUP)
    best = cell_stats(runs, GROUP, "best_test_acc")
    first = runs.drop_duplicates("cell").set_index("cell")
    rows = []
    for f, b in zip(final.itertuples(index=False), best.itertuples(index=False)):
        row = dict(zip(GROUP, f[: len(GROUP)]))
        refs = references_for(row["data.name"], row["binary_opt.name"], row["model.label"])
        rows.append(
            {
                "dataset": row["data.name"],
                "model": row["model.label"],
                "optimizer": plotting.OPTIMIZER_LABELS.get(row["binary_opt.name"], row["binary_opt.name"]),
                "setting": setting(first.loc[row["cell"]]),
                "seeds": int(f.n),
                "final_test_acc_mean": f.mean * 100,
                "final_test_acc_std": f.std * 100,
                "best_test_acc_mean": b.mean * 100,
                "best_test_acc_std": b.std * 100,
                "reference_top1": "; ".join(f"{r.top1}" for r in refs),
                "reference": "; ".join(r.what for r in refs),
                "_order": ORDER.index(row["binary_opt.name"]) if row["binary_opt.name"] in ORDER else len(ORDER),
            }
        )
    frame = pd.DataFrame(rows).sort_values(["dataset", "model", "_order", "setting"], kind="stable")
    return frame.drop(columns="_order").reset_index(drop=True)


def markdown(frame: pd.DataFrame) -> str:
    return markdown_table(
        pd.DataFrame(
            {
                "dataset": frame["dataset"],
                "model": frame["model"],
                "optimizer": frame["optimizer"],
                "setting": frame["setting"],
                "seeds": frame["seeds"],
                "final test acc (%)": [
                    pm(m / 100, s / 100).rstrip(" %")
                    for m, s in zip(frame["final_test_acc_mean"], frame["final_test_acc_std"])
                ],
                "best test acc (%)": [
                    pm(m / 100, s / 100).rstrip(" %")
                    for m, s in zip(frame["best_test_acc_mean"], frame["best_test_acc_std"])
                ],
                "reference top-1 (%)": [
                    f"{v} ({w})" if v else "—" for v, w in zip(frame["reference_top1"], frame["reference"])
                ],
            }
        )
    )


def analyse(experiment: Experiment, out_dir: Path, tables_dir: Path) -> Section:
    section = Section(KEY, TITLE, CLAIM, notices=experiment.notices)
    frame = table(experiment)
    tables_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = tables_dir / f"{NAME}.csv", tables_dir / f"{NAME}.md"
    frame.to_csv(csv_path, index=False, float_format="%.6f")
    md = markdown(frame)
    md_path.write_text(
        f"# {TITLE}\n\n{md}\n\n{experiment.caption()} · mean ± sample std over seeds. "
        "References: analysis/reference.py (model, training steps and source of each), set beside results of "
        "the same dataset and model only.\n"
    )
    for (dataset, model), group in frame.groupby(["dataset", "model"], sort=True):
        best = group.loc[group["final_test_acc_mean"].idxmax()]
        refs = references_for(dataset, model=model)
        section.findings.append(
            f"{dataset} · {model}: best is **{best['optimizer']}** ({best['final_test_acc_mean']:.2f} %); "
            + ", ".join(f"{r['optimizer']} {r['final_test_acc_mean']:.2f} %" for _, r in group.iterrows())
            + (
                f"; published: {', '.join(f'{r.what} {r.top1} %' for r in refs)}"
                if refs
                else "; no published reference for this dataset and model"
            )
        )
    section.tables.append(md)
    section.caption = experiment.caption()
    section.figures = draw(frame, out_dir, section.caption) + [csv_path, md_path]
    return section


def draw(frame: pd.DataFrame, out_dir: Path, caption: str) -> list[Path]:
    contexts = list(frame.groupby(["dataset", "model"], sort=True))
    fig, axes = plotting.figure(len(contexts), 1, TITLE)
    for ax, ((dataset, model), group) in zip(axes[0], contexts):
        x = np.arange(len(group))
        names = [_NAME_OF_LABEL.get(label, label) for label in group["optimizer"]]
        ax.bar(
            x,
            group["final_test_acc_mean"],
            yerr=group["final_test_acc_std"].fillna(0),
            capsize=3,
            color=[plotting.OPTIMIZER_COLORS.get(n, "tab:gray") for n in names],
        )
        ax.set_xticks(x, [o.replace(" ", "\n", 1) for o in group["optimizer"]])
        for xi, value in zip(x, group["final_test_acc_mean"]):
            ax.text(xi, value - 1, f"{value:.1f}", ha="center", va="top", fontsize=7, color="white")
        for r in references_for(dataset, model=model):
            ax.axhline(r.top1, color="0.3", linestyle=":", linewidth=1)
            ax.text(x[-1] + 0.45, r.top1, f"{r.what}: {r.top1}", ha="right", va="bottom", fontsize=6.5, color="0.3")
        low = float((group["final_test_acc_mean"] - group["final_test_acc_std"].fillna(0)).min())
        ax.set_ylim(max(0.0, low - 10), 100)
        ax.set_ylabel("final " + plotting.ACC_LABEL + " (axis cut)")
        ax.set_title(f"{dataset} · {model}")
    legend = " · error bars ±1 std over seeds; dotted: published references"
    return plotting.save(fig, out_dir, NAME, caption + legend)
