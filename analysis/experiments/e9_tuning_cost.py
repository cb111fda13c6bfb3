"""E9: does the filter view make tuning cheaper? Random and TPE searches over latent Adam, latent SGD and the filter.

Every number comes from runs.parquet: the trials of grid e9 (columns search_space, searcher, search_repeat,
search_index) scored by their validation accuracy at the last epoch. Test accuracy is never used here.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import plotting
from analysis.frame import Experiment
from analysis.report import Section, markdown_table, pct, pp
from analysis.verdicts import INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED, Verdict

KEY, NAME = "e9", "e9_tuning_cost"
TITLE = "E9 · tuning cost of the latent spaces and of the filter space"
CLAIM = (
    "Reading latent-weight training as a gradient filter simplifies tuning: the latent optimizer's seven "
    "hyperparameters (init scale, learning rate, weight decay, schedule, momentum/beta1, beta2, eps) reduce to "
    "three (alpha, gamma, alpha's schedule), so an equal search budget finds good settings sooner in the filter space."
)
SCORE = "final_val_acc"  # validation accuracy at the last epoch: what the searchers maximised
SPACES = ("latent_adam", "latent_sgd", "filter")
SPACE_LABELS = {"latent_adam": "latent Adam (7)", "latent_sgd": "latent SGD (5)", "filter": "filter (3)"}
SPACE_COLORS = {"latent_adam": "tab:orange", "latent_sgd": "tab:blue", "filter": "tab:red"}
NEAR = 0.005  # "within 0.5 pp of the best" for trials-to-reach
BOOTSTRAP = 1000
SEED = 0
CLAIM_TEXT = "an equal small budget of random trials finds better settings in the filter space than in either latent space"
RULE = (
    "n* = max(1, N // 4) random trials, N = the smallest random pool of the three spaces. Statistic: the expected "
    "best validation accuracy of n* draws without replacement (Dodge et al. 2019) in the filter space minus the "
    "larger of the two latent spaces'. Noise: half-width of its 95 % bootstrap interval (pools resampled with "
    f"replacement, {BOOTSTRAP} times). supported if the statistic exceeds the noise; not supported if it is below "
    "minus the noise; inconclusive otherwise, or when a space has fewer than 2 finished random trials."
)


# --- estimators --------------------------------------------------------------------------------------------
def expected_max(scores: np.ndarray | list[float], n: int) -> float:
    """E[max of n draws without replacement] from the pool ``scores`` (Dodge et al. 2019), exact.

    With the pool sorted, v_(1) <= ... <= v_(N), the maximum of a uniformly drawn n-subset is v_(i) with
    probability C(i-1, n-1) / C(N, n); ties need no special case.
    """
    values = np.sort(np.asarray(scores, dtype=float))
    if not 1 <= n <= len(values):
        raise ValueError(f"n: expected 1 <= n <= {len(values)} (the pool size), got {n}")
    return float(max_weights(len(values))[n - 1] @ values)


def max_weights(size: int) -> np.ndarray:
    """W[n-1, i-1] = C(i-1, n-1) / C(size, n): the chance that v_(i) is the maximum of n draws."""
    from scipy.special import gammaln

    def log_comb(top: np.ndarray, k: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            out = gammaln(top + 1) - gammaln(k + 1) - gammaln(top - k + 1)
        return np.where(top >= k, out, -np.inf)

    n = np.arange(1, size + 1, dtype=float)[:, None]
    i = np.arange(1, size + 1, dtype=float)[None, :]
    return np.exp(log_comb(i - 1, n - 1) - log_comb(np.full_like(n, size), n))


def expected_max_curve(scores: np.ndarray, rng: np.random.Generator | None = None,
                       bootstrap: int = BOOTSTRAP) -> pd.DataFrame:
    """n, the expected best after n draws, and a 95 % bootstrap band (pool resampled with replacement)."""
    scores = np.asarray(scores, dtype=float)
    weights = max_weights(len(scores))
    mean = weights @ np.sort(scores)
    rng = rng or np.random.default_rng(SEED)
    if bootstrap:
        samples = np.sort(rng.choice(scores, (bootstrap, len(scores))), axis=1)
        low, high = np.percentile(samples @ weights.T, [2.5, 97.5], axis=0)
    else:
        low = high = mean
    return pd.DataFrame({"n": np.arange(1, len(scores) + 1), "expected": mean, "low": low, "high": high})


def expected_draws_to_reach(scores: np.ndarray, target: float) -> float:
    """Expected draws without replacement until the first score >= target: (N + 1) / (K + 1); inf if K = 0."""
    scores = np.asarray(scores, dtype=float)
    hits = int(np.sum(scores >= target))
    return (len(scores) + 1) / (hits + 1) if hits else math.inf


# --- the data ----------------------------------------------------------------------------------------------
def trials(runs: pd.DataFrame) -> pd.DataFrame:
    """The scored search trials: one row per finished run with a space, a searcher and a finite score."""
    if SCORE not in runs.columns:
        return runs.iloc[0:0]
    keep = runs["search_space"].isin(SPACES) & runs["searcher"].isin(["random", "tpe"])
    out = runs[keep & np.isfinite(runs[SCORE].astype(float))].copy()
    return out.sort_values(["search_space", "searcher", "search_repeat", "search_index", "start_time"])


def pools(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    random = frame[frame["searcher"] == "random"]
    return {space: random.loc[random["search_space"] == space, SCORE].to_numpy(float) for space in SPACES}


def tpe_curves(frame: pd.DataFrame) -> dict[str, list[np.ndarray]]:
    """Per space, per repeat, the best-so-far score by trial (trial order: index, then start time)."""
    tpe = frame[frame["searcher"] == "tpe"]
    out: dict[str, list[np.ndarray]] = {}
    for space in SPACES:
        rows = tpe[tpe["search_space"] == space]
        out[space] = [np.maximum.accumulate(group[SCORE].to_numpy(float))
                      for _, group in rows.groupby("search_repeat", sort=True)]
    return out


def verdict(frame: pd.DataFrame, bootstrap: int = BOOTSTRAP) -> Verdict:
    """The e9 row of tables/verdicts.csv, by RULE (one training seed per trial: n_seeds 1)."""
    pooled = pools(frame)
    sizes = {space: len(scores) for space, scores in pooled.items()}
    if min(sizes.values()) < 2:
        return Verdict(KEY, CLAIM_TEXT, INCONCLUSIVE, f"too few finished random trials per space ({sizes})",
                       math.nan, math.nan, 1, RULE)
    n = max(1, min(sizes.values()) // 4)

    def difference(samples: dict[str, np.ndarray]) -> float:
        latent = max(expected_max(samples[s], n) for s in SPACES if s != "filter")
        return expected_max(samples["filter"], n) - latent

    value = difference(pooled)
    rng = np.random.default_rng(SEED)
    boot = [difference({s: rng.choice(v, len(v)) for s, v in pooled.items()}) for _ in range(bootstrap)]
    low, high = np.percentile(boot, [2.5, 97.5])
    noise = float(max(value - low, high - value))
    outcome = SUPPORTED if value > noise else NOT_SUPPORTED if value < -noise else INCONCLUSIVE
    statistic = f"E[best val acc of {n} random trials]: filter - best latent space"
    return Verdict(KEY, CLAIM_TEXT, outcome, statistic, float(value), noise, 1, RULE)


def reach_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Trials to reach within NEAR of the best validation accuracy of all E9 trials, per space and searcher."""
    target = float(frame[SCORE].max()) - NEAR
    rows = []
    pooled, curves = pools(frame), tpe_curves(frame)
    for space in SPACES:
        scores = pooled[space]
        if len(scores):
            rows.append({"space": space, "searcher": "random", "trials": len(scores),
                         "best_val_acc": float(scores.max()), "target_val_acc": target,
                         "trials_to_reach": expected_draws_to_reach(scores, target),
                         "how": "expected draws without replacement, (N+1)/(K+1)",
                         "reached": f"{int(np.sum(scores >= target))} of {len(scores)} trials"})
        runs = curves[space]
        if runs:
            firsts = [int(np.argmax(c >= target)) + 1 if np.any(c >= target) else math.inf for c in runs]
            rows.append({"space": space, "searcher": "tpe", "trials": int(sum(len(c) for c in runs)),
                         "best_val_acc": float(max(c[-1] for c in runs)), "target_val_acc": target,
                         "trials_to_reach": float(np.median(firsts)),
                         "how": "median over repeats of the first trial reaching it (inf: not reached)",
                         "reached": f"{sum(math.isfinite(f) for f in firsts)} of {len(runs)} repeats"})
    return pd.DataFrame(rows)


def r2_scores(frame: pd.DataFrame) -> pd.DataFrame:
    """Cross-validated R^2 of the score from the filter coordinates vs the full latent configuration.

    Latent SGD: its exact reading (filter_alpha, filter_gamma); latent Adam (decoupled decay): its approximate
    one, alpha ~ lr * wd, gamma ~ 1 - beta1. Samples without a real reading are left out of both models.
    """
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.model_selection import KFold, cross_val_score

    rows = []
    for space, full in (("latent_sgd", ["binary_opt.lr", "binary_opt.weight_decay", "binary_opt.momentum",
                                        "init.scale"]),
                        ("latent_adam", ["binary_opt.lr", "binary_opt.weight_decay", "binary_opt.beta1",
                                         "binary_opt.beta2", "binary_opt.eps", "init.scale"])):
        runs = frame[frame["search_space"] == space]
        alpha, gamma = filter_coordinates(runs)
        ok = np.isfinite(alpha) & np.isfinite(gamma) & (alpha > 0) & (gamma > 0)
        runs, alpha, gamma = runs[ok], alpha[ok], gamma[ok]
        schedule = pd.get_dummies(runs["schedule.name"]).to_numpy(float)
        y = runs[SCORE].to_numpy(float)
        features = {
            "filter (alpha, gamma, schedule)": np.column_stack([np.log10(alpha), np.log10(gamma), schedule]),
            f"full latent ({len(full) + 1} hyperparameters)": np.column_stack(
                [_log_or_complement(runs[c].to_numpy(float), c) for c in full] + [schedule]),
        }
        for name, x in features.items():
            folds = min(5, len(y) // 2)  # at least two samples per held-out fold: R^2 needs them
            value = math.nan
            if folds >= 3 and np.var(y) > 0:
                model = RandomForestRegressor(n_estimators=50, min_samples_leaf=2, random_state=SEED)
                value = float(np.mean(cross_val_score(model, x, y, scoring="r2",
                                                      cv=KFold(folds, shuffle=True, random_state=SEED))))
            rows.append({"space": space, "features": name, "r2": value, "n": len(y)})
    return pd.DataFrame(rows)


def filter_coordinates(runs: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    if len(runs) and (runs["binary_opt.name"] == "adam").all():
        return ((runs["binary_opt.lr"] * runs["binary_opt.weight_decay"]).to_numpy(float),
                (1 - runs["binary_opt.beta1"]).to_numpy(float))
    return runs["filter_alpha"].to_numpy(float), runs["filter_gamma"].to_numpy(float)


def _log_or_complement(values: np.ndarray, column: str) -> np.ndarray:
    if column.endswith(("momentum", "beta1", "beta2")):
        values = 1 - values
    return np.log10(np.clip(values, 1e-12, None))


# --- the section -------------------------------------------------------------------------------------------
def analyse(experiment: Experiment, out_dir: Path, tables_dir: Path) -> Section:
    section = Section(KEY, TITLE, CLAIM, notices=experiment.notices)
    frame = trials(experiment.runs)
    row = verdict(frame)
    section.verdicts.append(row)
    if frame.empty:
        section.findings.append(f"no finished search trials with a {SCORE}: nothing to draw")
        return section
    table = reach_table(frame)
    tables_dir.mkdir(parents=True, exist_ok=True)
    table.to_csv(tables_dir / f"{NAME}.csv", index=False, float_format="%.6f")
    r2 = r2_scores(frame)
    pooled = pools(frame)
    for space in SPACES:
        if len(pooled[space]):
            n = max(1, len(pooled[space]) // 4)
            section.findings.append(
                f"{SPACE_LABELS[space]}: random pool of {len(pooled[space])}, best {pct(pooled[space].max())}, "
                f"expected best of {n}: {pct(expected_max(pooled[space], n))}")
    for record in r2.itertuples():
        section.findings.append(f"{record.space}: cross-validated R² from {record.features}: "
                                f"{'n/a' if not math.isfinite(record.r2) else f'{record.r2:.2f}'} (n = {record.n})")
    section.findings.append(f"{row.statistic}: {pp(row.value)} (95 % bootstrap half-width {pp(row.noise)})")
    shown = table.assign(best_val_acc=[pct(v) for v in table["best_val_acc"]],
                         trials_to_reach=[f"{v:.1f}" if math.isfinite(v) else "not reached"
                                          for v in table["trials_to_reach"]])
    section.tables.append(markdown_table(shown[["space", "searcher", "trials", "best_val_acc", "trials_to_reach",
                                                "reached"]]))
    section.caption = experiment.caption(f"score: validation accuracy at the last epoch ({SCORE})")
    section.figures = draw(frame, r2, out_dir, section.caption)
    return section


def draw(frame: pd.DataFrame, r2: pd.DataFrame, out_dir: Path, caption: str) -> list[Path]:
    fig, axes = plotting.figure(2, 2, TITLE)
    (dodge_ax, tpe_ax), (map_ax, r2_ax) = axes
    _draw_dodge(dodge_ax, pools(frame))
    _draw_tpe(tpe_ax, tpe_curves(frame))
    _draw_map(fig, map_ax, frame)
    _draw_r2(r2_ax, r2)
    return plotting.save(fig, out_dir, NAME, caption)


def _draw_dodge(ax: object, pooled: dict[str, np.ndarray]) -> None:
    for space in SPACES:
        scores = pooled[space]
        if not len(scores):
            continue
        curve = expected_max_curve(scores)
        color = SPACE_COLORS[space]
        ax.plot(curve["n"], 100 * curve["expected"], color=color, label=f"{SPACE_LABELS[space]} (N={len(scores)})")
        ax.fill_between(curve["n"], 100 * curve["low"], 100 * curve["high"], color=color, alpha=0.15, lw=0)
    if not any(len(scores) for scores in pooled.values()):
        ax.text(0.5, 0.5, "no finished random trials (n = 0)", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("random trials n")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("expected best validation accuracy (%)")
    ax.set_title("(a) random search: E[best of n] (Dodge), 95 % band")
    if any(len(scores) for scores in pooled.values()):
        ax.legend(loc="lower right")


def _draw_tpe(ax: object, curves: dict[str, list[np.ndarray]]) -> None:
    drawn = False
    for space in SPACES:
        runs = curves[space]
        if not runs:
            continue
        length = max(len(c) for c in runs)
        stack = np.full((len(runs), length), np.nan)
        for i, c in enumerate(runs):
            stack[i, : len(c)] = c
        x = np.arange(1, length + 1)
        color = SPACE_COLORS[space]
        ax.plot(x, 100 * np.nanmedian(stack, axis=0), color=color, marker="o", ms=3,
                label=f"{SPACE_LABELS[space]} (R={len(runs)})")
        ax.fill_between(x, 100 * np.nanmin(stack, axis=0), 100 * np.nanmax(stack, axis=0), color=color, alpha=0.15,
                        lw=0)
        drawn = True
    if not drawn:
        ax.text(0.5, 0.5, "no finished TPE trials (n = 0)", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("TPE trial")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("best validation accuracy so far (%)")
    ax.set_title("(b) TPE: median and range over repeats")
    if drawn:
        ax.legend(loc="lower right")


def _draw_map(fig: object, ax: object, frame: pd.DataFrame) -> None:
    sgd = frame[frame["search_space"] == "latent_sgd"]
    alpha, gamma = sgd["filter_alpha"].to_numpy(float), sgd["filter_gamma"].to_numpy(float)
    real = np.isfinite(alpha) & np.isfinite(gamma) & (alpha > 0) & (gamma > 0)
    filt = frame[frame["search_space"] == "filter"]
    scores = frame[SCORE].to_numpy(float)
    vmin, vmax = 100 * np.nanmin(scores), 100 * np.nanmax(scores)
    if len(filt):
        ax.scatter(filt["binary_opt.alpha"], filt["binary_opt.gamma"], c=100 * filt[SCORE], vmin=vmin, vmax=vmax,
                   cmap="viridis", marker="s", s=22, alpha=0.5, edgecolors="none",
                   label=f"filter-space samples (n={len(filt)})")
    points = ax.scatter(alpha[real], gamma[real], c=100 * sgd[SCORE].to_numpy(float)[real], vmin=vmin, vmax=vmax,
                        cmap="viridis", marker="o", s=30, edgecolors="k", linewidths=0.5,
                        label=f"latent SGD at its exact reading (n={int(real.sum())})")
    apart = int((~real).sum())
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("alpha (log)")
    ax.set_ylabel("gamma (log)")
    ax.set_title(f"(c) latent SGD at its filter reading (none: n={apart})")
    if apart:  # shown apart: a strip of their validation accuracies, at the right edge
        strip = sgd[~real][SCORE].to_numpy(float)
        ax.text(0.98, 0.02, "no real reading:\n" + ", ".join(f"{100 * v:.1f}" for v in sorted(strip)[:12])
                + (" ..." if len(strip) > 12 else "") + " %", transform=ax.transAxes, ha="right", va="bottom",
                fontsize=6.5, color="0.3")
    plotting.colorbar(fig, points, ax, "validation accuracy (%)")
    ax.legend(loc="upper left", fontsize=6.5)


def _draw_r2(ax: object, r2: pd.DataFrame) -> None:
    labels, values, colors = [], [], []
    for record in r2.itertuples():
        labels.append(f"{record.space}\n{record.features.split(' ')[0]} (n={record.n})")
        values.append(max(record.r2, -1.0) if math.isfinite(record.r2) else 0.0)  # below -1: clipped, value printed
        colors.append("tab:red" if record.features.startswith("filter") else "0.5")
    ax.barh(range(len(values)), values, color=colors)
    for i, record in enumerate(r2.itertuples()):
        text = "n/a (too few samples)" if not math.isfinite(record.r2) else f"{record.r2:.2f}"
        ax.text(0.01, i, text, va="center", fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlim(-1.05, 1.05)
    ax.set_xlabel("cross-validated R² of validation accuracy")
    ax.set_title("(d) CV R²: 3 filter coords vs full config")
