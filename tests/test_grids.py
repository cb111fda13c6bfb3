"""Grid files: the eight shipped grids, expansion semantics, and broken files refused before anything is written."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from bnn.config import flatten
from bnn.mapping import latent_to_filter
from pipeline.cli import ablate_main
from pipeline.grids import GridError, builtin_grids, expand, find_grid, load_cells, load_grid



def cells_of(name: str, preset: str) -> list:
    return expand(load_grid(find_grid(name)), preset, check_paths=False)


def write_grid(tmp_path: Path, body: str, name: str = "g.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


# --- the shipped grids ---------------------------------------------------------------------------------------
def test_nine_grids_ship_with_the_documented_presets() -> None:
    grids = [load_grid(p) for p in builtin_grids()]
    assert [g.experiment for g in grids] == [f"e{i}" for i in range(1, 10)]
    for grid in grids:
        assert {"smoke", "cpu", "cifar10"} <= set(grid.presets), grid.name
        assert ("imagenet" in grid.presets) == (grid.experiment == "e8"), grid.name
        for preset in grid.presets:
            assert expand(grid, preset, check_paths=False), (grid.name, preset)


@pytest.mark.parametrize("path", builtin_grids(), ids=lambda p: p.stem)
def test_presets_have_their_scale(path: Path) -> None:
    grid = load_grid(path)
    smoke = expand(grid, "smoke", check_paths=False)
    assert 2 <= len(smoke) <= 6 or grid.search is not None  # a search grid (E9): random pools, sized in its file
    for cell in smoke:
        c = cell.config
        assert (c.data.name, c.model.name, c.model.hidden, c.epochs, c.batch_size) == (
            "digits", "mlp", (64, 64), 2, 64)
    for cell in expand(grid, "cpu", check_paths=False):
        assert (cell.config.data.name, cell.config.model.name) == ("fashion-mnist", "mlp")
    for cell in expand(grid, "cifar10", check_paths=False):
        c = cell.config
        assert (c.data.name, c.model.name, c.epochs, c.batch_size) == ("cifar10", "resnet20", 350, 128)


def steps_of(config) -> int:
    """Optimizer steps T of a run: alpha x T says whether alpha can act at all (paper.md section 6)."""
    examples = config.data.train_subset
    return -(-examples // config.batch_size) * config.epochs


def test_e1_pairs_latent_sgd_with_the_exactly_mapped_filter_from_the_same_random_init() -> None:
    cells = cells_of("e1", "cpu")
    assert len(cells) == 12
    by_setting: dict[tuple, dict[str, object]] = {}
    for cell in cells:
        c = cell.config
        assert c.init.scale > 0 and (c.dtype, c.schedule.name) == ("float64", "constant")
        opt = c.binary_opt
        by_setting.setdefault((opt.lr, opt.weight_decay, opt.momentum, c.seed), {})[opt.name] = opt
    assert len(by_setting) == 6
    for (lr, wd, mu, _), pair in by_setting.items():
        assert set(pair) == {"sgd", "filter"}
        assert (pair["filter"].alpha, pair["filter"].gamma) == latent_to_filter(lr, wd, mu)
        assert pair["filter"].state_init == "latent"


def test_e2_anti_diagonals_share_alpha_in_the_regime_where_alpha_acts() -> None:
    cells = cells_of("e2", "cpu")
    default_init = [c for c in cells if c.config.init.scale == 1e-3 and c.config.seed == 0]
    products = Counter(f"{c.config.binary_opt.lr * c.config.binary_opt.weight_decay:.3e}" for c in default_init)
    assert products == {"1.000e-04": 1, "1.000e-03": 2, "1.000e-02": 3, "1.000e-01": 2, "1.000e+00": 1}
    for diagonal in (1e-3, 1e-2, 1e-1):
        assert 0.5 <= diagonal * steps_of(cells[0].config) <= 100
    assert all(c.config.binary_opt.name == "sgd" and c.config.binary_opt.momentum == 0 for c in cells)
    assert {c.config.init.scale for c in cells} == {1e-3, 1.0}  # 1.0: where the claim should fail
    assert {c.config.seed for c in cells} == {0, 1, 2}


def test_e3_spans_init_scales_with_and_without_decay() -> None:
    cells = cells_of("e3", "cpu")
    scales = sorted({c.config.init.scale for c in cells})
    assert scales[-1] / scales[0] >= 1e4
    assert {c.config.binary_opt.weight_decay > 0 for c in cells} == {False, True}
    assert {c.config.seed for c in cells} == {0, 1, 2}


def test_e4_holds_alpha_fixed_and_pairs_each_momentum_with_its_filter() -> None:
    cells = cells_of("e4", "cpu")
    latent = {c.config.binary_opt.momentum for c in cells if c.config.binary_opt.name == "sgd"}
    assert latent == {0.0, 0.5, 0.9, 0.97}
    alphas = set()
    for cell in cells:
        opt = cell.config.binary_opt
        alpha, gamma = latent_to_filter(opt.lr, opt.weight_decay, opt.momentum)
        alphas.add(round(alpha, 6))
        if opt.name == "filter":
            assert (opt.alpha, opt.gamma, opt.state_init) == (alpha, gamma, "latent")
    assert alphas == {0.01}


def test_e5_cells_can_differ_and_carry_a_frozen_control() -> None:
    cells = cells_of("e5", "cpu")
    filters = [c.config for c in cells if c.config.binary_opt.name == "filter"]
    assert all(0.5 <= c.binary_opt.alpha * steps_of(c) <= 100 for c in filters)
    assert Counter(c.config.binary_opt.name for c in cells)["frozen"] == 3
    assert {c.config.seed for c in cells} == {0, 1, 2}


def test_e8_compares_four_optimizers_and_the_control_over_three_seeds() -> None:
    for preset in ("cpu", "cifar10"):
        cells = cells_of("e8", preset)
        assert Counter(c.config.binary_opt.name for c in cells) == {
            "adam": 3, "sgd": 3, "bop": 3, "filter": 3, "frozen": 3}
        assert {c.config.seed for c in cells} == {0, 1, 2}
    imagenet = cells_of("e8", "imagenet")
    for cell in imagenet:
        c = cell.config
        assert (c.model.name, c.data.name, c.batch_size, c.epochs) == ("reactnet_a", "imagenet", 512, 256)
        assert c.model.teacher_path
    adam = [c.config.binary_opt for c in imagenet if c.config.binary_opt.name == "adam"]
    assert adam and adam[0].lr == 1e-3


@pytest.mark.parametrize("path", builtin_grids(), ids=lambda p: p.stem)
def test_every_cpu_grid_runs_at_least_two_seeds(path: Path) -> None:
    if load_grid(path).search is not None:
        pytest.skip("a search grid (E9): every trial is a new config; its noise is the bootstrap over the pool")
    cells = expand(load_grid(path), "cpu", check_paths=False)
    per_cell = Counter(tuple(sorted((k, repr(v)) for k, v in c.label.items() if k != "seed")) for c in cells)
    assert min(per_cell.values()) >= 2


# --- expansion semantics -----------------------------------------------------------------------------------
def test_expansion_merges_presets_zips_axes_and_expands_env(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("WMHP_TEST_ROOT", str(tmp_path))
    path = write_grid(tmp_path, """\
        name: t
        experiment: e0
        base:
          binary_opt: {name: filter, gamma: 0.5}
          data.root: ${WMHP_TEST_ROOT}
        axes:
          binary_opt.alpha: [0.1, 0.01]
          seed: [0, 1, 2]
          variant:
            - {epochs: 3}
            - {epochs: 4, batch_size: 32}
        presets:
          smoke:
            axes:
              seed: null
              binary_opt.alpha: [0.5]
        """)
    cells = expand(load_grid(path), "smoke")
    assert [(c.config.binary_opt.alpha, c.config.epochs, c.config.batch_size) for c in cells] == [
        (0.5, 3, 64), (0.5, 4, 32)]
    assert all(c.config.data.root == str(tmp_path) and c.config.seed == 0 for c in cells)
    assert all(c.config.binary_opt.gamma == 0.5 and c.config.data.name == "digits" for c in cells)
    assert cells[1].label == {"binary_opt.alpha": 0.5, "variant": {"epochs": 4, "batch_size": 32}}
    overridden = expand(load_grid(path), "smoke", {"binary_opt.gamma": 0.25, "data.root": None})
    assert {flatten(c.config)["binary_opt.gamma"] for c in overridden} == {0.25}
    assert len({c.hash for c in cells + overridden}) == 4


def test_a_cell_is_identified_by_its_resolved_config(tmp_path: Path) -> None:
    # alpha null maps (lr, wd, momentum) to exactly the values written out by hand: the same cell.
    lr, wd, mu = 0.1, 5e-4, 0.9
    alpha, gamma = latent_to_filter(lr, wd, mu)
    path = write_grid(tmp_path, f"""\
        name: t
        experiment: e0
        base: {{binary_opt.name: filter, binary_opt.lr: {lr}, binary_opt.weight_decay: {wd},
                binary_opt.momentum: {mu}}}
        axes:
          variant:
            - {{binary_opt.alpha: null}}
            - {{binary_opt.alpha: {alpha!r}, binary_opt.gamma: {gamma!r}}}
        presets: {{smoke: {{}}}}
        """)
    with pytest.raises(GridError, match="same config"):
        expand(load_grid(path), "smoke")


# --- broken grid files and bad options: the table in tests/test_hardening.py ---------------------------
GOOD_HEAD = "name: broken\nexperiment: e0\n"
RUNNABLE = "{smoke: {base: {binary_opt.alpha: 1.0e-3}}}"


def broken_file(tmp_path: Path, body: str) -> Path:
    return write_grid(tmp_path, GOOD_HEAD + body.replace("{smoke: {}}", RUNNABLE))


def test_missing_name_is_refused(tmp_path: Path, capsys) -> None:
    grid = write_grid(tmp_path, "experiment: e0\npresets: {smoke: {}}")
    assert ablate_main([str(grid), "--preset", "smoke", "--results-dir", str(tmp_path / "r")]) == 2
    assert "name: required" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_an_unreachable_ray_head_fails_fast_before_writing(tmp_path: Path, capsys) -> None:
    grid = broken_file(tmp_path, "presets: {smoke: {}}")
    results = tmp_path / "results"
    argv = [str(grid), "--preset", "smoke", "--results-dir", str(results), "--address", "127.0.0.1:1"]
    assert ablate_main(argv) == 1
    assert "no Ray head answers" in capsys.readouterr().err
    assert not results.exists()


def test_unknown_grid_name_lists_the_grids(tmp_path: Path, capsys) -> None:
    assert ablate_main(["e99", "--results-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "e99" in err and "e1" in err and "e9" in err
    assert not (tmp_path / "r").exists()


def test_all_grids_are_checked_before_any_is_run(tmp_path: Path) -> None:
    broken = broken_file(tmp_path, "axes: {seed: [0, 0]}\npresets: {smoke: {}}")
    with pytest.raises(GridError, match="same config"):
        load_cells(["e2", str(broken)], "smoke")


def test_dry_run_counts_without_writing(tmp_path: Path, capsys) -> None:
    results = tmp_path / "results"
    assert ablate_main(["e2", "e5", "--preset", "cpu", "--results-dir", str(results), "--dry-run"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith(("e2_", "e5_", "total"))}
    assert rows["e2_lr_wd"][1:5] == ["39", "0", "0", "39"]
    assert rows["e5_alpha_gamma"][1:5] == ["30", "0", "0", "30"]
    assert rows["total"][1] == "69"
    assert "wall at" in out
    assert not results.exists()


def test_validating_every_grid_leaves_torch_unimported():
    """The driver expands and resolves every cell (mapping alpha/gamma included) without importing torch, whose
    import would cost every launch seconds of CPU that its trials need."""
    code = ("import sys; from pipeline.grids import load_cells; cells = load_cells(None, 'smoke'); "
            "assert sum(len(c) for _, c in cells) > 0; print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("dry_run", [True, False])
def test_a_cross_field_conflict_is_refused_at_validation_naming_both_fields(tmp_path: Path, capsys, dry_run) -> None:
    """Scaling needs latent weights: a grid pairing it with the filter fails validation (dry run and launch), not
    in every trial."""
    grid = broken_file(tmp_path, "base: {model.scaling: true}\naxes: {binary_opt.name: [sgd, filter]}\n"
                                 "presets: {smoke: {}}")
    argv = [str(grid), "--preset", "smoke", "--results-dir", str(tmp_path / "r")] + (["--dry-run"] if dry_run else [])
    assert ablate_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model.scaling" in err and "binary_opt.name is 'filter'" in err
    assert not (tmp_path / "r").exists()


def test_the_report_experiments_name_is_not_a_grid_name(tmp_path: Path, capsys) -> None:
    grid = write_grid(tmp_path, "name: report\nexperiment: e0\npresets: {smoke: {}}")
    assert ablate_main([str(grid), "--preset", "smoke", "--results-dir", str(tmp_path / "r"), "--dry-run"]) == 2
    assert "name: 'report' is reserved" in capsys.readouterr().err
