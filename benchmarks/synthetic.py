"""A generated result set written to MLflow by the pipeline's own Tracker, for benchmarks/bench_analysis.py and
the analysis tests: if the pipeline's stored form drifts from what analysis reads, the fast tests fail.

Nothing is trained: each run's numbers follow a smooth made-up law of the filter reading (alpha, gamma) plus seed
noise, shaped only so that every figure has something to draw. Configs, params, tags, run names, statuses and
artifacts are real: TrainConfig overrides -> resolve -> pipeline cells -> Tracker.start_run / log_epochs /
end_run. Besides the finished runs, each grid gets one FAILED run (partial curves), and e2 one KILLED run (metric
history, no curves file: a killed driver never wrote it) followed by a FINISHED rerun of the same cell, and one
RUNNING run.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bnn.config import TrainConfig, config_hash, from_flat, resolve
from bnn.mapping import filter_reading
from bnn.schedules import multiplier
from pipeline.grids import Cell
from pipeline.tracking import Tracker, create_sqlite_store, sqlite_path

LAYERS = ("fc1", "fc2", "fc3")
STEPS_PER_EPOCH = 50
BASE = {"data.name": "fashion-mnist", "model.name": "mlp", "schedule.name": "constant"}  # unless a grid sweeps it


@dataclass(frozen=True)
class Size:
    """How large a generated set is: log-axis points per grid axis, and seeds per cell."""

    points: int = 3
    seeds: int = 2
    epochs: int = 4

    def trials(self) -> int:
        return sum(len(cells) for cells in grids(self).values())


def grids(size: Size) -> dict[str, list[dict[str, Any]]]:
    """Grid name -> list of override dicts (seed included), in the spirit of pipeline/grids/eN_*.yaml."""
    n, seeds = size.points, range(size.seeds)
    base = {"epochs": size.epochs, **BASE}
    logs = lambda lo, hi: [float(f"{v:.3g}") for v in np.logspace(lo, hi, n)]  # noqa: E731
    out: dict[str, list[dict[str, Any]]] = {}
    e1 = [(0.1, 5e-4, 0.9), (0.1, 1e-4, 0.9), (0.1, 5e-4, 0.0)]
    out["e1_equivalence"] = [
        {
            **base,
            "binary_opt.name": opt,
            "binary_opt.lr": lr,
            "binary_opt.weight_decay": wd,
            "binary_opt.momentum": mu,
            "init.scale": 1e-2,
            "seed": s,
        }
        for lr, wd, mu in e1
        for opt in ("sgd", "filter")
        for s in seeds
    ]
    # lr and wd on one log lattice, so equal products (iso-alpha diagonals) recur across the grid.
    lattice = [float(f"{v:.3g}") for v in 10.0 ** np.linspace(-3, 0, max(n, 2))]
    wds = [float(f"{v:.3g}") for v in 10.0 ** np.linspace(-5, -2, max(n, 2))]
    out["e2_lr_wd"] = [
        {**base, "binary_opt.name": "sgd", "binary_opt.lr": lr, "binary_opt.weight_decay": wd, "seed": s}
        for lr in lattice
        for wd in wds
        for s in seeds
    ]
    out["e3_init_scale"] = [
        {
            **base,
            "binary_opt.name": "sgd",
            "binary_opt.lr": 0.1,
            "binary_opt.weight_decay": wd,
            "init.scale": sc,
            "seed": s,
        }
        for sc in logs(-4, 1)
        for wd in (0.0, 5e-4)
        for s in seeds
    ]
    # As pipeline/grids/e4_momentum.yaml: alpha fixed at 1e-2 (wd = alpha * gamma / lr), latent SGD per momentum
    # and its exactly mapped filter twin started from the mapped latent init.
    momenta = [(0.0, 1e-1), (0.5, 4.9495e-2), (0.9, 9.0909e-3), (0.97, 2.0202e-3)][: max(n, 2)]
    twin = {"binary_opt.alpha": None, "binary_opt.gamma": None, "binary_opt.state_init": "latent"}
    out["e4_momentum"] = [
        {
            **base,
            "binary_opt.name": name,
            **(twin if name == "filter" else {}),
            "binary_opt.lr": 0.1,
            "binary_opt.weight_decay": wd,
            "binary_opt.momentum": mu,
            "seed": s,
        }
        for mu, wd in momenta
        for name in ("sgd", "filter")
        for s in seeds
    ]
    out["e5_alpha_gamma"] = [
        {**base, "binary_opt.name": "filter", "binary_opt.alpha": a, "binary_opt.gamma": g, "seed": s}
        for a in logs(-6, -2)
        for g in logs(-3, 0)
        for s in seeds
    ] + [{**base, "binary_opt.name": "frozen", "seed": s} for s in seeds]  # the control
    e6 = [  # the exact pair: alpha = lr x wd = 1e-2, gamma 1 = 1 - momentum, filter from the mapped state
        {
            "binary_opt.name": "filter",
            "binary_opt.alpha": 1e-2,
            "binary_opt.gamma": 1.0,
            "binary_opt.state_init": "latent",
        },
        {"binary_opt.name": "sgd", "binary_opt.lr": 0.1, "binary_opt.momentum": 0.0, "binary_opt.weight_decay": 0.1},
    ]
    out["e6_schedules"] = [
        {**base, **opt, "schedule.name": sched, "schedule.step_epochs": max(1, size.epochs // 3), "seed": s}
        for sched in ("constant", "linear", "cosine", "step")
        for opt in e6
        for s in seeds
    ]
    out["e7_adam"] = [
        {
            **base,
            "binary_opt.name": "adam",
            "binary_opt.lr": 1e-3,
            "binary_opt.beta2": b2,
            "binary_opt.eps": eps,
            "binary_opt.weight_decay": 1e-4,
            "binary_opt.decay_mode": mode,
            "seed": s,
        }
        for b2 in (0.99, 0.999)
        for eps in logs(-8, -4)
        for mode in ("l2", "decoupled")
        for s in seeds
    ] + [
        # AdamW's twin: alpha = lr x wd, gamma = 1 - beta1
        {**base, "binary_opt.name": "filter", "binary_opt.alpha": 1e-7, "binary_opt.gamma": 0.1, "seed": s}
        for s in seeds
    ]
    optimizers = [
        {"binary_opt.name": "adam", "binary_opt.lr": 1e-3},
        {"binary_opt.name": "sgd", "binary_opt.lr": 0.1, "binary_opt.weight_decay": 5e-4, "binary_opt.momentum": 0.9},
        {"binary_opt.name": "bop", "binary_opt.gamma": 1e-4},
        {"binary_opt.name": "filter", "binary_opt.alpha": 5e-4, "binary_opt.gamma": 0.1},
    ]
    out["e8_optimizers"] = [
        {**base, **opt, "data.name": data, "schedule.name": "linear", "seed": s}
        for data in ("digits", "fashion-mnist")
        for opt in optimizers
        for s in seeds
    ]
    return out


def write(tracking_uri: str, results_dir: Path, size: Size = Size(), history: str = "full") -> int:
    """Log the generated grids into ``tracking_uri`` (artifacts under ``results_dir/artifacts/<grid>``).

    history: "full" logs every epoch's metrics (as the pipeline does); "final" logs only the last epoch's,
    which leaves the latest metrics the same and makes a large set quicker to generate.
    Returns the number of runs written.
    """
    db = sqlite_path(tracking_uri)
    if db is not None:
        create_sqlite_store(db)  # as a launch does: a copy of a migrated empty store, not seconds of migrations
    tracker = Tracker(tracking_uri, results_dir)
    count = 0
    for grid, cells in grids(size).items():
        experiment_id = tracker.ensure_experiment(grid)

        def run(overrides: dict[str, Any], status: str, epochs_done: int | None = None) -> None:
            _run(tracker, experiment_id, grid, overrides, status, epochs_done, history)

        for overrides in cells:
            run(overrides, "FINISHED")
        run({**cells[-1], "seed": 90}, "FAILED", epochs_done=max(1, size.epochs // 2))
        count += len(cells) + 1
        if grid == "e2_lr_wd":
            run(cells[0], "KILLED", epochs_done=max(1, size.epochs // 2))
            run({**cells[0], "seed": 91}, "RUNNING", epochs_done=1)
            count += 2
    return count


def _run(tracker: Tracker, experiment_id: str, grid: str, overrides: dict[str, Any], status: str,
         epochs_done: int | None, history: str) -> None:
    config = resolve(from_flat(overrides))
    label = {name: value for name, value in overrides.items() if name != "epochs" and BASE.get(name) != value}
    cell = Cell(grid, grid.split("_")[0], config, config_hash(config), label)
    run_id = tracker.start_run(experiment_id, cell, "synthetic")
    rows = curves(config, epochs_done or config.epochs)
    unfinished = status in ("KILLED", "RUNNING")
    tracker.log_epochs(run_id, rows if history == "full" or unfinished else rows[-1:])
    if status == "KILLED":  # as the next launch marks a run its killed driver left RUNNING: no curves file
        tracker.end_run(run_id, [], status, error="driver died while this run was in progress")
    elif status != "RUNNING":
        tracker.end_run(run_id, rows, status)


def _law_point(config: TrainConfig) -> tuple[float, float]:
    """(alpha, gamma) the made-up law is a function of: the filter reading where there is one, else a plausible
    stand-in (Adam; latent SGD without weight decay, whose alpha is 0)."""
    opt = config.binary_opt
    if opt.name == "frozen":  # never trained: made far worse than any trained cell
        return 1e-7, 1.0
    alpha, gamma = filter_reading(opt)
    if opt.name == "adam":
        return opt.lr * 0.3 * (1 + 1e3 * opt.eps) * (1.5 if opt.decay_mode == "decoupled" else 1.0), 1.0 - opt.beta1
    return max(alpha, 1e-6), gamma


def curves(config: TrainConfig, epochs_done: int) -> list[dict[str, float]]:
    """The made-up per-epoch metrics of one run: every key of bnn.train's contract."""
    rng = np.random.default_rng(int(hashlib.sha256(config_hash(config).encode()).hexdigest()[:12], 16))
    alpha, gamma = _law_point(config)
    schedule = multiplier(config.schedule, config.epochs)
    opt = config.binary_opt
    quality = -0.04 * (math.log10(alpha) + 3.5) ** 2 - 0.02 * (math.log10(gamma) + 1) ** 2
    final = float(np.clip(0.86 + quality + 0.004 * rng.standard_normal(), 0.1, 0.95))
    wd = opt.weight_decay if opt.name in ("sgd", "adam") else 1.0
    scale = max(config.init.scale, 1e-12)
    forget = math.log(scale / 1e-3) / alpha if wd > 0 and scale > 1e-3 else 0.0
    # E1 pairs: the sign trajectory depends on the cell without the optimizer's name, so sgd and its mapped
    # filter share it, except for a rare made-up mismatch so that the count is not always zero.
    pair = f"{opt.lr}/{opt.weight_decay}/{opt.momentum}/{config.seed}/{config.init.scale}"
    pair_rng = np.random.default_rng(int(hashlib.sha256(pair.encode()).hexdigest()[:12], 16))
    rows = []
    for epoch in range(1, epochs_done + 1):
        s = schedule(epoch - 1)
        progress = 1 - math.exp(-3 * epoch / config.epochs)
        steps = epoch * STEPS_PER_EPOCH
        flip = min(0.5, 20 * alpha * s * gamma**0.5) * (1 + 0.05 * rng.standard_normal())
        forgotten = wd > 0 and steps >= forget
        rate = math.nan if opt.name == "frozen" else s * (
            opt.alpha if opt.name == "filter" else opt.gamma if opt.name == "bop" else opt.lr)
        reading = filter_reading(opt, rate=rate)  # as bnn.train logs it
        digest = float(pair_rng.integers(0, 2**48))
        if opt.name == "filter" and rng.random() < 0.1:
            digest += 1.0
        row = {
            "epoch": float(epoch),
            "train_loss": 2.3 * (1 - progress) + 0.3 + 0.01 * rng.standard_normal(),
            "train_acc": 0.1 + (final + 0.02 - 0.1) * progress,
            "val_loss": 2.3 * (1 - progress) + 0.34 + 0.01 * rng.standard_normal(),
            "val_acc": 0.1 + (final + 0.005 - 0.1) * progress + 0.003 * rng.standard_normal(),
            "test_loss": 2.3 * (1 - progress) + 0.35 + 0.01 * rng.standard_normal(),
            "test_acc": 0.1 + (final - 0.1) * progress + (0.002 * rng.standard_normal() if epoch < epochs_done else 0),
            "flip_ratio": max(flip, 0.0),
            "sign_agreement_init": 0.5 if forgotten else 0.5 + 0.5 * math.exp(-steps * alpha * 10),
            "init_forget_step": float(math.ceil(max(forget, 1.0))) if forgotten else math.nan,
            "lr": rate,
            "alpha": reading[0],
            "gamma": reading[1],
            "real_lr": config.real_opt.lr * s,
            "epoch_s": 1.0 + 0.05 * rng.random(),
            "steps": float(steps),
            "sign_hash": digest,
        }
        row.update({f"flips.{name}": max(flip, 0.0) * (1 + 0.1 * i) for i, name in enumerate(LAYERS)})
        rows.append(row)
    return rows
