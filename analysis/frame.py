"""The parquet files as pandas frames, and the selection every figure starts from.

Only FINISHED runs are drawn. Within one experiment: one preset (the one with most finished runs unless asked),
one finished run per (grid, config_hash) (the latest), and for E1-E7 one dataset/model context. Seeds are
averaged per *cell*: every config field except ``seed``. Whatever else is set aside is said in a notice.
``Experiment.controls`` holds the frozen-control runs (binary weights never trained) of the same preset and
dataset/model from every experiment, the baseline for grids without a control of their own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from analysis.schema import FINISHED, read_curves, read_runs
from bnn.config import field_names, neutral_fields
from wmhp.contract import CURVES_PARQUET, RUNS_PARQUET

CONFIG_FIELDS: tuple[str, ...] = tuple(field_names())
CELL_FIELDS: tuple[str, ...] = tuple(name for name in CONFIG_FIELDS if name != "seed")
# Identity of a cell apart from fields that cannot change results (where data lives, loader workers, device):
# the schema marks them (bnn.config.neutral_fields).
_INERT = frozenset(neutral_fields())


@dataclass
class Results:
    runs: pd.DataFrame
    curves: pd.DataFrame


@dataclass
class Experiment:
    key: str  # "e1".."e8"
    runs: pd.DataFrame  # finished runs of this experiment's context, one per cell and seed, with a "cell" column
    curves: pd.DataFrame  # per-epoch rows of those runs
    preset: str
    excluded: dict[str, int]  # status -> runs of this experiment and preset that are not FINISHED
    notices: list[str] = field(default_factory=list)
    # Finished frozen-control runs (binary_opt.name == "frozen": binary weights never trained) of the same preset
    # and dataset/model context(s), from ANY experiment: the baseline an experiment without its own control draws.
    # One per (grid, config_hash), the latest; a "cell" column of their own (seeds averaged per cell as usual).
    controls: pd.DataFrame = field(default_factory=pd.DataFrame)

    def control(self, data_name: str | None = None, model_label: str | None = None) -> pd.DataFrame:
        """The frozen controls of one dataset/model (default: the experiment's only context), one row per seed:
        where several experiments ran the same control cell and seed, the latest run of that seed is kept."""
        if self.controls.empty:
            return self.controls
        rows = self.controls
        if data_name is None and model_label is None:
            contexts = {(d, m) for d, m in zip(self.runs["data.name"], self.runs["model.label"])}
            if len(contexts) != 1:
                raise ValueError("control(): this experiment has several dataset/model contexts; name one")
            data_name, model_label = contexts.pop()
        rows = rows[(rows["data.name"] == data_name) & (rows["model.label"] == model_label)]
        return rows.sort_values(["end_time", "run_id"]).drop_duplicates("seed", keep="last").reset_index(drop=True)

    def caption(self, extra: str = "") -> str:
        contexts = sorted({(d, m) for d, m in zip(self.runs["data.name"], self.runs["model.label"])})
        where = "; ".join(f"{d} · {m}" for d, m in contexts)
        text = f"preset {self.preset} · {where} · {seed_text(self.runs['seed'])} · {len(self.runs)} finished runs"
        if self.excluded:
            text += " (not drawn: " + ", ".join(f"{n} {s.lower()}" for s, n in sorted(self.excluded.items())) + ")"
        return text + (f" · {extra}" if extra else "")

    def curve(self, run_ids: pd.Series | list[str], metric: str) -> pd.DataFrame:
        """Mean, std and count over the given runs of one per-epoch metric, by epoch."""
        rows = self.curves[self.curves["run_id"].isin(list(run_ids))]
        return rows.groupby("epoch")[metric].agg(["mean", "std", "count"]).reset_index()


def load(results_dir: Path) -> Results:
    """Read and check both parquet files (SchemaError names a missing or mistyped column)."""
    results_dir = Path(results_dir)
    runs = read_runs(results_dir / RUNS_PARQUET).to_pandas()
    curves = read_curves(results_dir / CURVES_PARQUET).to_pandas()
    runs["model.hidden"] = [tuple(int(h) for h in v) if v is not None else () for v in runs["model.hidden"]]
    runs["model.label"] = [
        f"{name} {'-'.join(map(str, hidden))}" if name == "mlp" else name
        for name, hidden in zip(runs["model.name"], runs["model.hidden"])
    ]
    return Results(runs, curves)


def select(results: Results, key: str, preset: str | None = None, one_context: bool = True) -> Experiment | None:
    """The finished runs of experiment ``key`` to draw, or None when there are none (with the reason printed)."""
    runs = results.runs[results.runs["experiment"] == key]
    notices: list[str] = []
    if runs.empty:
        return None
    finished_counts = runs[runs["status"] == FINISHED].groupby("preset").size()
    if preset is None:
        if finished_counts.empty:
            chosen = sorted(runs["preset"].dropna().unique())[0] if runs["preset"].notna().any() else None
        else:
            chosen = sorted(finished_counts.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
        others = sorted(set(runs["preset"].dropna()) - {chosen})
        if others:
            notices.append(f"runs of preset(s) {', '.join(others)} also exist; drawn: preset {chosen}")
    else:
        chosen = preset
    runs = runs[runs["preset"] == chosen]
    excluded = runs[runs["status"] != FINISHED].groupby("status").size().to_dict()
    finished = runs[runs["status"] == FINISHED].sort_values(["end_time", "run_id"])
    latest = finished.drop_duplicates(["grid", "config_hash"], keep="last")
    if len(latest) < len(finished):
        notices.append(f"{len(finished) - len(latest)} older finished duplicate run(s) of the same cells not drawn")
    if latest.empty:
        return None
    if one_context:
        contexts = latest.groupby(["data.name", "model.label"]).size().reset_index(name="n")
        if len(contexts) > 1:
            best = contexts.sort_values(["n", "data.name", "model.label"], ascending=[False, True, True]).iloc[0]
            notices.append(
                f"runs on {len(contexts) - 1} other dataset/model context(s) not drawn; drawn: "
                f"{best['data.name']} · {best['model.label']}"
            )
            latest = latest[(latest["data.name"] == best["data.name"]) & (latest["model.label"] == best["model.label"])]
    latest = latest.copy()
    latest["cell"] = cell_ids(latest)
    curves = results.curves[results.curves["run_id"].isin(latest["run_id"])]
    return Experiment(
        key,
        latest.reset_index(drop=True),
        curves,
        str(chosen),
        {k: int(v) for k, v in excluded.items()},
        notices,
        frozen_controls(results, str(chosen), latest),
    )


def frozen_controls(results: Results, preset: str, runs: pd.DataFrame) -> pd.DataFrame:
    """Finished frozen runs of ``preset`` from every experiment, on the dataset/model contexts of ``runs``."""
    all_runs = results.runs
    frozen = all_runs[
        (all_runs["binary_opt.name"] == "frozen") & (all_runs["status"] == FINISHED) & (all_runs["preset"] == preset)
    ]
    contexts = set(zip(runs["data.name"], runs["model.label"]))
    in_context = pd.Series(
        [(d, m) in contexts for d, m in zip(frozen["data.name"], frozen["model.label"])], index=frozen.index, dtype=bool
    )
    frozen = frozen[in_context]
    frozen = frozen.sort_values(["end_time", "run_id"]).drop_duplicates(["grid", "config_hash"], keep="last").copy()
    frozen["cell"] = cell_ids(frozen) if len(frozen) else pd.Series(dtype=int)
    return frozen.reset_index(drop=True)


def cell_ids(runs: pd.DataFrame) -> pd.Series:
    """One id per distinct config apart from the seed (and inert fields): the unit seeds are averaged over."""
    fields = [name for name in CELL_FIELDS if name not in _INERT]
    codes, _ = pd.factorize(pd.Series(row_keys(runs, fields), index=runs.index), sort=True)
    return pd.Series(codes, index=runs.index)


def varying(runs: pd.DataFrame, exclude: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """Config fields (besides seed and ``exclude``) that take more than one value among ``runs``."""
    out = []
    for name in CELL_FIELDS:
        if name in exclude or name in _INERT:
            continue
        if len(set(row_keys(runs, [name]))) > 1:
            out.append(name)
    return out


def row_keys(frame: pd.DataFrame, columns: list[str]) -> list[str]:
    """One text key per row from ``columns`` (None, NaN and tuples included), for grouping and matching."""
    return ["|".join(map(repr, values)) for values in zip(*(frame[c].tolist() for c in columns))]


def note_other_axes(experiment: Experiment, runs: pd.DataFrame, axes: set[str]) -> None:
    """Say which fields vary beyond a figure's axes: those are averaged together in that figure."""
    others = varying(runs, exclude=axes)
    if others:
        experiment.notices.append(f"also varies (averaged together in the figure): {', '.join(others)}")


def cell_stats(runs: pd.DataFrame, by: list[str], value: str = "final_test_acc") -> pd.DataFrame:
    """Mean, sample std (ddof 1; NaN for one seed) and seed count of ``value`` per combination of ``by``."""
    grouped = runs.groupby(by, dropna=False)[value]
    return grouped.agg(mean="mean", std="std", n="count").reset_index()


def seed_text(seeds: pd.Series) -> str:
    values = sorted({int(s) for s in seeds})
    if not values:
        return "no seeds"
    if len(values) > 2 and values == list(range(values[0], values[-1] + 1)):
        return f"seeds {values[0]}-{values[-1]} (n={len(values)})"
    return f"seed{'s' if len(values) > 1 else ''} {', '.join(map(str, values))}"


def log_key(value: float, digits: int = 6) -> float:
    """A value on a log grid, rounded so that products computed two ways (0.1*1e-3, 1e-2*1e-2) compare equal."""
    return round(math.log10(value), digits) if value > 0 else -math.inf
