"""E4: latent SGD over momentum at a fixed alpha, and the gradient filter at the exactly mapped (alpha, gamma),
paired by seed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from analysis import plotting
from analysis.experiments.common import ci_points, draw_frozen, frozen_control, n_text
from analysis.experiments.e1_equivalence import compare, pairs
from analysis.frame import Experiment, note_other_axes
from analysis.report import Section, pp
from analysis.stats import Interval, cell_intervals, equivalence, interval, margin, noise_floor
from analysis.verdicts import INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED, Verdict, inconclusive_for_lack_of_data

KEY, NAME = "e4", "e4_momentum_gamma"
TITLE = "E4 · latent momentum vs the filter's gamma: one optimizer at the mapped setting?"
CLAIM = (
    "Momentum adds a second exponential moving average in front of the first: latent SGD with momentum mu is the "
    "filter with gamma close to 1 - mu (exactly: the larger root of the mapping). Momentum and gamma are one knob."
)
MU = "binary_opt.momentum"
VERDICT_CLAIM = "latent SGD at momentum mu and the filter at the exactly mapped (alpha, gamma) reach the same accuracy"
RULE = (
    "per momentum: paired-by-seed difference latent SGD - filter (same setting, seed and init), final test "
    "accuracy, 95 % t-interval; noise = median seed std of the cells of both optimizers, delta = max(0.5 pp, "
    "2 x noise). supported: every momentum 'same' (interval inside +-delta); not supported: any 'different' "
    "(wholly outside); else inconclusive (also for fewer than 2 seeds)"
)


def paired_by_momentum(compared: pd.DataFrame, delta: float) -> pd.DataFrame:
    """Per momentum: interval of the per-seed differences latent - filter, its reading, and sign agreement."""
    rows = []
    for mu, group in compared.groupby(MU, sort=True):
        diff = interval(group["final_dacc"])
        agree = 1 - group["mismatches"] / group["compared"].where(group["compared"] > 0)
        rows.append(
            {
                MU: mu,
                "gamma": float(group["pair_gamma"].iloc[0]),
                "diff": diff.mean,
                "half": diff.half,
                "n": diff.n,
                "reading": equivalence(diff, delta),
                "agreement": float(agree.mean()),
                "agreement_min": float(agree.min()),
            }
        )
    return pd.DataFrame(rows, columns=[MU, "gamma", "diff", "half", "n", "reading", "agreement", "agreement_min"])


def _noise(experiment: Experiment) -> float:
    runs = experiment.runs[experiment.runs["binary_opt.name"].isin(["sgd", "filter"])]
    # "cell" (every config field but the seed) where analysis.frame made it; else the fields E4 varies.
    return noise_floor(runs, ["cell"] if "cell" in runs.columns else ["binary_opt.name", "filter_alpha", MU])


def verdicts(experiment: Experiment) -> list[Verdict]:
    """The equivalence verdict (RULE) from the experiment's frames alone."""
    noise = _noise(experiment)
    compared = compare(experiment, pairs(experiment))
    return [_verdict(paired_by_momentum(compared, margin(noise)), noise, compared)]


def _verdict(table: pd.DataFrame, noise: float, compared: pd.DataFrame) -> Verdict:
    if table.empty:
        return inconclusive_for_lack_of_data(KEY, VERDICT_CLAIM, RULE, "no latent-SGD run with its mapped filter twin")
    readings = set(table["reading"])
    if "different" in readings:
        verdict = NOT_SUPPORTED
    elif readings == {"same"}:
        verdict = SUPPORTED
    else:
        verdict = INCONCLUSIVE
    worst = table.loc[table["diff"].abs().idxmax()]
    statistic = (
        f"largest |paired difference latent SGD - filter| (at momentum {plotting.sci(worst[MU])}); readings: "
        + ", ".join(f"mu {plotting.sci(m)} {r}" for m, r in zip(table[MU], table["reading"]))
        + f"; delta {pp(margin(noise))}"
    )
    n_seeds = int(compared["seed"].nunique())
    return Verdict(KEY, VERDICT_CLAIM, verdict, statistic, float(worst["diff"]), noise, n_seeds, RULE)


def analyse(experiment: Experiment, out_dir: Path) -> Section:
    section = Section(KEY, TITLE, CLAIM, notices=experiment.notices)
    runs = experiment.runs[experiment.runs["binary_opt.name"].isin(["sgd", "filter"])]
    noise = _noise(experiment)
    delta = margin(noise)
    compared = compare(experiment, pairs(experiment))
    table = paired_by_momentum(compared, delta)
    section.verdicts = [_verdict(table, noise, compared)]
    if runs.empty:
        section.findings.append("no latent-SGD or filter runs: nothing to draw")
        return section
    note_other_axes(
        experiment,
        runs,
        {"binary_opt.name", MU, "binary_opt.weight_decay", "binary_opt.gamma", "binary_opt.alpha"}
        | {"binary_opt.state_init"},
    )
    by = ["filter_alpha", "filter_gamma", MU]
    stats = {
        name: cell_intervals(group, by).sort_values("filter_gamma") for name, group in runs.groupby("binary_opt.name")
    }
    for name, acc in stats.items():
        section.findings.append(
            f"{plotting.OPTIMIZER_LABELS[name]}: {len(acc)} settings, final test accuracy "
            + ", ".join(
                f"gamma {plotting.sci(g)}: {100 * m:.2f} ± {100 * h:.2f} % (n={n})"
                for g, m, h, n in zip(acc["filter_gamma"], acc["mean"], acc["ci"], acc["n"])
            )
        )
    dtypes = ", ".join(sorted(map(str, runs["dtype"].unique()))) if "dtype" in runs.columns else "unknown"
    for row in table.itertuples(index=False):
        section.findings.append(
            f"momentum {plotting.sci(row[0])} (gamma {plotting.sci(row.gamma)}): latent - filter = {pp(row.diff)} ± "
            f"{pp(row.half)} (n={row.n}) → {row.reading}; epoch-end sign vectors equal in "
            f"{100 * row.agreement:.0f} % of epochs (lowest pair {100 * row.agreement_min:.0f} %)"
        )
    if len(table) and (table["agreement_min"] < 1).any():
        section.findings.append(
            f"arithmetic {dtypes}: where sign vectors differ, rounding (the two optimizers add the same terms in a "
            "different order) can make the trajectories drift apart; one flipped weight changes every later step"
        )
    if table.empty:
        section.notices.append("no latent-SGD run has its mapped filter twin: the paired panels are not drawn")
    section.findings.append(f"seed noise (median seed std of a cell): {pp(noise)}; equivalence margin delta {pp(delta)}")
    control = frozen_control(experiment)
    if control is not None:
        section.findings.append(f"frozen control: {100 * control.mean:.2f} % (n={control.n})")
    section.caption = experiment.caption()
    section.figures = draw(stats, table, delta, control, out_dir, section.caption)
    return section


def draw(
    stats: dict[str, pd.DataFrame],
    table: pd.DataFrame,
    delta: float,
    control: Interval | None,
    out_dir: Path,
    caption: str,
) -> list[Path]:
    fig, axes = plotting.figure(3 if len(table) else 1, 1, TITLE)
    acc_ax = axes[0, 0]
    for name, acc in stats.items():
        acc = acc.sort_values("filter_gamma")
        text = "latent SGD (x = gamma mapped from μ)" if name == "sgd" else "gradient filter (x = gamma)"
        ci_points(
            acc_ax,
            acc["filter_gamma"],
            acc["mean"] * 100,
            acc["ci"] * 100,
            marker="o" if name == "sgd" else "s",
            color=plotting.OPTIMIZER_COLORS[name],
            label=f"{text} ({n_text(acc['n'])})",
        )
    draw_frozen(acc_ax, control)
    plotting.log_axis(acc_ax, "x")
    acc_ax.set_xlabel("gamma (log; latent: mapped from momentum μ, ≈ 1 − μ)")
    acc_ax.set_ylabel("final " + plotting.ACC_LABEL)
    acc_ax.set_title("accuracy against gamma, 95 % interval")
    acc_ax.legend(loc="best", fontsize=7)
    if len(table):
        diff_ax, sign_ax = axes[0, 1], axes[0, 2]
        diff_ax.axhspan(-100 * delta, 100 * delta, color="tab:green", alpha=0.12, linewidth=0, label="±delta")
        diff_ax.axhline(0, color="0.5", linewidth=0.8)
        ci_points(
            diff_ax,
            table[MU],
            table["diff"] * 100,
            table["half"] * 100,
            line=False,
            color="tab:purple",
            label=f"latent − filter ({n_text(table['n'])})",
        )
        diff_ax.set_xlabel("momentum μ")
        diff_ax.set_ylabel("paired difference of final test accuracy (pp)")
        diff_ax.set_title("latent SGD − mapped filter, same seed")
        diff_ax.legend(fontsize=7)
        sign_ax.bar(range(len(table)), table["agreement"] * 100, color="tab:gray")
        sign_ax.set_xticks(range(len(table)), [f"μ={plotting.sci(m)}\nn={n}" for m, n in zip(table[MU], table["n"])])
        sign_ax.set_ylim(0, 105)
        sign_ax.set_ylabel("epochs with equal sign vectors (%)")
        sign_ax.set_title("sign_hash agreement, mean over pairs")
    return plotting.save(fig, out_dir, NAME, caption + " · error bars: 95 % t-interval over seeds (none for n=1)")

