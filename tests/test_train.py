"""The one training loop: accuracy bars, exact +-1 invariants, determinism and exact resume."""

import json
import math
import subprocess
import sys

import pytest
import torch

from bnn.config import from_flat, resolve
from bnn.layers import binary_layers
from bnn.train import METRIC_NAMES, Run, train

DIGITS = {"data.name": "digits", "model.hidden": [128, 128], "batch_size": 64, "epochs": 15, "schedule.name": "linear"}

# Sensible settings per binary optimizer on digits (about 22 steps per epoch).
OPTIMIZERS = {
    "adam": {"binary_opt.name": "adam", "binary_opt.lr": 1e-2},
    "sgd": {"binary_opt.name": "sgd", "binary_opt.lr": 1.0, "binary_opt.momentum": 0.9},
    "bop": {"binary_opt.name": "bop", "binary_opt.gamma": 1e-2, "binary_opt.threshold": 1e-6},
    "filter": {"binary_opt.name": "filter", "binary_opt.alpha": 2e-2, "binary_opt.gamma": 0.2},
}


def run_to_end(overrides):
    run = Run(resolve(from_flat(overrides)))
    while run.epoch < run.config.epochs:
        run.run_epoch()
    return run


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_digits_accuracy_and_invariants(name):
    run = run_to_end({**DIGITS, **OPTIMIZERS[name]})
    final = run.history[-1]
    assert final["test_acc"] >= 0.85, f"{name}: {final['test_acc']:.3f}"
    assert set(METRIC_NAMES) <= set(final)
    assert [k for k in final if k.startswith("flips.")], "per-layer flip counts missing"
    assert 0 <= final["flip_ratio"] <= 1 and 0 <= final["sign_agreement_init"] <= 1
    if name in ("bop", "filter"):
        for _, layer in binary_layers(run.model):
            assert torch.equal(layer.weight.abs(), torch.ones_like(layer.weight)), "binary weights must be +-1"


@pytest.mark.parametrize("name", ["filter", "adam"])
def test_fashion_mnist_reaches_80_percent(name):
    overrides = {"data.name": "fashion-mnist", "model.hidden": [256, 256], "batch_size": 128, "epochs": 3,
                 "schedule.name": "constant"}  # fmt: skip
    settings = {"filter": {**OPTIMIZERS["filter"], "binary_opt.alpha": 1e-3, "binary_opt.gamma": 0.1},
                "adam": {**OPTIMIZERS["adam"], "binary_opt.lr": 1e-3}}  # fmt: skip
    metrics = train(from_flat({**overrides, **settings[name]}))
    assert metrics["test_acc"] >= 0.80, f"{name}: {metrics['test_acc']:.3f}"


def without_timing(rows):
    return [{k: v for k, v in row.items() if k != "epoch_s"} for row in rows]


def test_same_config_same_numbers():
    overrides = {**DIGITS, **OPTIMIZERS["filter"], "epochs": 2}
    first, second = [], []
    train(from_flat(overrides), first.append)
    train(from_flat(overrides), second.append)
    assert without_timing(first) == without_timing(second)


def wmhp_train(args, tmp_path, name):
    out = tmp_path / f"{name}.jsonl"
    cmd = [sys.executable, "-m", "wmhp.cli", "train", *args, "--metrics-out", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return [json.loads(line) for line in out.read_text().splitlines()]


@pytest.mark.parametrize("name", ["sgd", "filter"])
def test_resume_in_new_process_equals_uninterrupted(tmp_path, name):
    overrides = {**DIGITS, **OPTIMIZERS[name], "epochs": 4, "binary_opt.weight_decay": 1e-4}
    args = [f"--set={k}={json.dumps(v)}" for k, v in overrides.items()]
    straight = wmhp_train(args, tmp_path, "straight")
    ckpt = str(tmp_path / "ckpt")
    first = wmhp_train([*args, "--checkpoint-dir", ckpt, "--stop-after", "2"], tmp_path, "first")
    second = wmhp_train([*args, "--checkpoint-dir", ckpt], tmp_path, "second")
    assert [m["epoch"] for m in first + second] == [1, 2, 3, 4]
    assert without_timing(first + second) == without_timing(straight)


def test_checkpoint_of_another_config_is_refused(tmp_path):
    overrides = {**DIGITS, **OPTIMIZERS["filter"], "epochs": 1}
    train(from_flat(overrides), checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="checkpoint_dir"):
        train(from_flat({**overrides, "seed": 1}), checkpoint_dir=tmp_path)


def test_alpha_metric_is_the_filter_view_of_latent_sgd():
    rows = []
    overrides = {**DIGITS, "binary_opt.name": "sgd", "binary_opt.lr": 0.1, "binary_opt.weight_decay": 5e-4,
                 "epochs": 2, "schedule.name": "constant"}  # fmt: skip
    train(from_flat(overrides), rows.append)
    assert math.isclose(rows[0]["alpha"], 5e-5, rel_tol=1e-12) and rows[0]["lr"] == 0.1
