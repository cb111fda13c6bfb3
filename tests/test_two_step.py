"""Two-step training of the latent baselines (step 1: real weights + binary activations; step 2: both binary,
from step 1's checkpoint) and the deterministic switch: bnn alone, grid expansion, and a real Ray/MLflow launch."""

from __future__ import annotations

import io
import re
import textwrap
from pathlib import Path

import pytest
import torch

from bnn.config import ConfigError, config_hash, from_flat, resolve, step1_config
from bnn.layers import binary_layers
from bnn.train import CHECKPOINT_FILE, Run, configure_determinism, train
from pipeline.grids import expand, load_cells, load_grid

SMOKE = {"data.name": "digits", "model.name": "mlp", "model.hidden": [32, 32], "batch_size": 64,
         "binary_opt.name": "sgd", "binary_opt.lr": 0.1, "binary_opt.momentum": 0.9,
         "binary_opt.weight_decay": 5.0e-4, "epochs": 2}  # fmt: skip


def step2(**extra) -> object:
    return resolve(from_flat({**SMOKE, "stage": "step2", **extra}))


def test_step2_starts_from_step1_weights_and_resumes(tmp_path: Path) -> None:
    config = step2()
    first = step1_config(config)
    assert first.stage == "step1" and config_hash(first) != config_hash(config)
    assert all(layer.weight_mode == "real" for _, layer in binary_layers(Run(first).model))
    train(first, checkpoint_dir=tmp_path / "s1")
    state = torch.load(tmp_path / "s1" / CHECKPOINT_FILE, weights_only=False)
    run = Run(config)
    run.start_from(state)
    for name, value in run.model.state_dict().items():
        assert torch.equal(value, state["model"][name]), name
    assert all(layer.weight_mode == "latent" for _, layer in binary_layers(run.model))

    with pytest.raises(ConfigError, match="init_from"):
        train(config)  # step 2 without its step 1
    with pytest.raises(ConfigError, match="init_from"):
        train(step2(seed=1), init_from=tmp_path / "s1" / CHECKPOINT_FILE)  # another config's step 1
    with pytest.raises(ConfigError, match="stage"):
        resolve(from_flat({**SMOKE, "binary_opt.name": "filter", "binary_opt.alpha": 1e-3, "stage": "step2"}))

    whole = train(config, init_from=tmp_path / "s1" / CHECKPOINT_FILE)
    train(config, checkpoint_dir=tmp_path / "s2", stop_after=1, init_from=tmp_path / "s1" / CHECKPOINT_FILE)
    resumed = train(config, checkpoint_dir=tmp_path / "s2")  # resumes from its own checkpoint, no init needed
    assert resumed["sign_hash"] == whole["sign_hash"] and resumed["test_acc"] == whole["test_acc"]


def test_deterministic_is_a_cpu_no_op_and_on_for_e1() -> None:
    before = torch.are_deterministic_algorithms_enabled()
    configure_determinism(True, torch.device("cpu"))
    assert torch.are_deterministic_algorithms_enabled() == before
    cells = [c for _, cells in load_cells(["e1"], "smoke") for c in cells]
    assert cells and all(c.config.deterministic for c in cells)
    from pipeline.runner import _RAY_ENV

    assert _RAY_ENV["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"


def two_step_grid(tmp_path: Path) -> Path:
    path = tmp_path / "twostep.yaml"
    base = ", ".join(f"{k}: {v}" for k, v in SMOKE.items() if not k.startswith(("data.", "model.")))
    path.write_text(textwrap.dedent(f"""\
        name: twostep
        experiment: e8
        base: {{{base}, model.hidden: [32, 32]}}
        axes:
          stage: [step2]
        presets: {{smoke: {{}}}}
        """))
    return path


def test_expansion_puts_each_step1_cell_before_its_step2(tmp_path: Path) -> None:
    cells = expand(load_grid(two_step_grid(tmp_path)), "smoke")
    assert [c.config.stage for c in cells] == ["step1", "step2"]
    assert cells[0].hash == config_hash(step1_config(cells[1].config))


@pytest.mark.slow
def test_pipeline_runs_step1_then_step2_from_it(tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    mlflow = pytest.importorskip("mlflow")
    from pipeline import run_grids

    grid = two_step_grid(tmp_path)
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        out = io.StringIO()
        summary = run_grids([str(grid)], "smoke", tmp_path / "res", out=out)
        again = run_grids([str(grid)], "smoke", tmp_path / "res", out=io.StringIO())
    finally:
        ray.shutdown()
    assert summary.ok, out.getvalue()
    assert again.total("already_done") == 2 and again.total("to_run") == 0
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'res' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("wmhp/twostep")
    runs = {r.data.tags["wmhp.config_hash"]: r for r in client.search_runs([experiment.experiment_id])}
    config = step2()
    first, second = runs[config_hash(step1_config(config))], runs[config_hash(config)]
    assert first.info.status == second.info.status == "FINISHED"
    assert second.info.start_time >= first.info.end_time  # step 2 waited for step 1
    # The pipeline's step 2 equals step 2 trained here from a step 1 trained here: it started from step 1.
    train(step1_config(config), checkpoint_dir=tmp_path / "s1")
    direct = train(config, init_from=tmp_path / "s1" / CHECKPOINT_FILE)
    assert second.data.metrics["sign_hash"] == direct["sign_hash"]
    assert second.data.metrics["test_acc"] == direct["test_acc"]


def test_imagenet_e8_dry_run_lists_step1_cells_before_their_step2(tmp_path: Path) -> None:
    from pipeline import run_grids

    (tmp_path / "imagenet").mkdir()
    (tmp_path / "resnet34.pth").write_bytes(b"")
    out = io.StringIO()
    run_grids(["e8"], "imagenet", tmp_path / "res", dry_run=True, out=out,
              overrides={"data.root": str(tmp_path / "imagenet"), "model.teacher_path": str(tmp_path / "resnet34.pth")})
    lines = out.getvalue().splitlines()
    start = lines.index(next(line for line in lines if line.startswith("two-step cells")))
    rows = [re.fullmatch(r"  phase (\d)  (step\d)  (done|to run)\s+(.+?)(?:  \(from (.+)\))?", line).groups()
            for line in lines[start + 1:]]
    assert [(r[0], r[1], "binary_opt=adam" in r[3]) for r in rows] == [
        ("1", "step1", True), ("1", "step1", False), ("2", "step2", True), ("2", "step2", False)]
    step1_names = [r[3] for r in rows[:2]]
    assert all("stage=step1" in name for name in step1_names)
    assert [r[4] for r in rows[2:]] == step1_names  # each step 2 names the step-1 run it starts from
    assert not (tmp_path / "res").exists()  # a dry run writes nothing
