"""Grid files: schema, validation and expansion into cells (one fully resolved TrainConfig each).

A grid file (``pipeline/grids/eN_<name>.yaml``) is YAML with these top-level keys::

    name: e2_lr_wd            # grid name: its MLflow experiment (wmhp.contract), trial names; [A-Za-z0-9_.-]
    experiment: e2            # the paper experiment it regenerates (a run tag, and the start of run names)
    description: one line     # the claim it tests (optional)
    base: {...}               # TrainConfig overrides shared by every preset, nested or dotted
    axes:                     # cartesian product over the axes, in file order
      binary_opt.lr: [0.01, 0.1]        # a dotted TrainConfig field -> non-empty list of values
      optimizer:                        # any other key: a *zipped* axis, a list of {field: value} mappings
        - {binary_opt.name: sgd}        #   (nested or dotted) applied together as one axis value
        - {binary_opt.name: filter, binary_opt.alpha: 1e-3}
    presets:                  # scales; each may override base (merged over it) and axes (replaced per key;
      smoke: {base: {...}, axes: {...}}  # an axis set to null is removed)
      cpu: {...}
    search: {...}             # instead of axes: hyperparameter searches over sampled spaces (pipeline/search.py);
                              # presets may then carry a search section too (budgets, range overrides)

A cell's overrides are: the preset's shared sizing from ``pipeline/grids/scales.yaml`` (dataset, model,
epochs, batch size of smoke / cpu / cifar10 / imagenet: the one place to tune a scale), then the grid's base,
then the preset's base, then ``--set`` overrides (refused on a key that an axis sets), then one value of every
axis. String values may name environment variables as ``${NAME}`` or
``${NAME:-default}`` (data roots, teacher checkpoints on a cluster). Two axes may not set the same field, and two
cells of one grid may not resolve to the same config (same config_hash).

Every error is a GridError naming the file, the preset, the key and what is allowed; nothing is written before
all grids of a launch are valid.
"""

from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bnn.config import (
    ConfigError,
    TrainConfig,
    coerce,
    quote,
    yaml_problem,
    config_hash,
    field_names,
    field_type,
    flatten_dict,
    from_flat,
    resolve,
    step1_config,
)
from wmhp.contract import REPORT_GRID, run_name

GRID_DIR = Path(__file__).resolve().parent / "grids"
SCALES_FILE = GRID_DIR / "scales.yaml"
PRESETS = ("smoke", "cpu", "cifar10", "imagenet")  # the documented scales; grid files may define others
TOP_LEVEL_KEYS = ("name", "experiment", "description", "base", "axes", "presets", "search")
PRESET_KEYS = ("description", "base", "axes", "search")
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class GridError(ConfigError):
    """Bad user input in a grid file or a launch option; the message names the file, key and allowed values."""


@dataclass(frozen=True)
class Axis:
    """One axis: its key in the file and its values, each a dict of dotted overrides."""

    key: str
    values: tuple[dict[str, Any], ...]

    @property
    def fields(self) -> set[str]:
        return {name for value in self.values for name in value}


@dataclass(frozen=True)
class Preset:
    base: dict[str, Any]
    axes: dict[str, Any]  # raw YAML: key -> list, or None to remove the grid's axis
    description: str = ""
    search: dict[str, Any] | None = None  # raw YAML, checked by pipeline.search


@dataclass(frozen=True)
class Grid:
    path: Path
    name: str
    experiment: str
    description: str
    base: dict[str, Any]
    axes: dict[str, Any]
    presets: dict[str, Preset] = field(default_factory=dict)
    search: dict[str, Any] | None = None  # a search grid (pipeline.search): sampled spaces instead of axes


@dataclass(frozen=True)
class Cell:
    """One point of a grid: the resolved config, its identity and the axis values that chose it."""

    grid: str
    experiment: str
    config: TrainConfig
    hash: str
    label: dict[str, Any]
    tags: dict[str, str] = field(default_factory=dict)  # extra MLflow tags (search grids: space, searcher, ...)
    run_name: str = field(init=False, compare=False)  # from the label as the cell was made (wmhp.contract.run_name)

    def __post_init__(self) -> None:
        swept: dict[str, Any] = {}
        for key, value in self.label.items():  # a zipped axis' value is a {field: value} mapping
            swept.update(value if isinstance(value, dict) else {key: value})
        object.__setattr__(self, "run_name", run_name(self.experiment, swept, self.config.seed))


# --- finding grid files ------------------------------------------------------------------------------------
def builtin_grids() -> list[Path]:
    """The eight grid files shipped with wmhp, in experiment order."""
    return sorted(GRID_DIR.glob("e*_*.yaml"), key=lambda p: int(re.match(r"e(\d+)", p.name).group(1)))


def find_grid(spec: str) -> Path:
    """A grid name (``e2`` or ``e2_lr_wd``) or the path of a grid file -> the file."""
    path = Path(spec)
    if path.suffix in (".yaml", ".yml") or os.sep in spec:
        if not path.is_file():
            raise GridError(f"grid {quote(spec)}: no such file")
        return path
    for candidate in builtin_grids():
        stem = candidate.stem
        if spec == stem or spec == stem.split("_", 1)[0]:
            return candidate
    names = ", ".join(p.stem.split("_", 1)[0] for p in builtin_grids())
    raise GridError(f"grid {quote(spec)}: unknown grid (allowed: {names}, their full names, or a grid file path)")


# --- loading -------------------------------------------------------------------------------------------------
def load_grid(path: str | Path) -> Grid:
    """Read and check the structure of a grid file: top-level keys, names, presets, axis shapes, field names.

    Values are checked against the schema when a preset is expanded (``expand``).
    """
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise GridError(f"{path}: cannot read grid file ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise GridError(f"{path}: not a UTF-8 text file (byte {exc.start}); expected a YAML grid file") from None
    except yaml.YAMLError as exc:
        raise GridError(f"{path}: not valid YAML ({yaml_problem(exc)})") from None
    where = str(path)
    if not isinstance(data, dict):
        raise GridError(f"{where}: expected a mapping with keys {', '.join(TOP_LEVEL_KEYS)}, got {quote(data)}")
    _check_keys(data, TOP_LEVEL_KEYS, where, "")
    for key in ("name", "experiment", "presets"):
        if key not in data:
            raise GridError(f"{where}: {key}: required key is missing")
    for key in ("name", "experiment"):
        if not isinstance(data[key], str) or not _NAME.match(data[key]):
            raise GridError(f"{where}: {key}: expected a non-empty string of letters, digits, '_', '.', '-', "
                            f"got {quote(data[key])}")
    if data["name"] == REPORT_GRID:
        raise GridError(f"{where}: name: '{REPORT_GRID}' is reserved for the report run of `wmhp figures`; choose another")
    description = data.get("description") or ""
    if not isinstance(description, str):
        raise GridError(f"{where}: description: expected a string, got {quote(description)}")
    base = _section(data.get("base"), where, "base")
    axes = _axes_mapping(data.get("axes"), where, "axes")
    presets_raw = data["presets"]
    if not isinstance(presets_raw, dict) or not presets_raw:
        raise GridError(f"{where}: presets: expected a non-empty mapping of preset name -> {{base, axes}}, "
                        f"got {quote(presets_raw)}")
    presets: dict[str, Preset] = {}
    for preset_name, raw in presets_raw.items():
        key = f"presets.{preset_name}"
        if not isinstance(preset_name, str) or not _NAME.match(preset_name):
            raise GridError(f"{where}: {key}: a preset name is letters, digits, '_', '.', '-'")
        raw = {} if raw is None else raw
        if not isinstance(raw, dict):
            raise GridError(f"{where}: {key}: expected a mapping with keys {', '.join(PRESET_KEYS)}, got {quote(raw)}")
        _check_keys(raw, PRESET_KEYS, where, key + ".")
        preset_axes = _axes_mapping(raw.get("axes"), where, f"{key}.axes", allow_null=True)
        presets[preset_name] = Preset(
            base=_section(raw.get("base"), where, f"{key}.base"),
            axes=preset_axes,
            description=str(raw.get("description") or ""),
            search=raw.get("search"),
        )
    grid = Grid(path, data["name"], data["experiment"], description, base, axes, presets, data.get("search"))
    if grid.search is not None or any(p.search is not None for p in presets.values()):
        from pipeline.search import check_search  # a search grid: its own schema, checked at load like axes

        check_search(grid)
    for preset_name in presets:  # axis shapes of every preset, so a typo in any preset is caught at once
        _axes_for(grid, preset_name)
    return grid


def _check_keys(data: dict[str, Any], allowed: tuple[str, ...], where: str, prefix: str) -> None:
    for key in data:
        if key not in allowed:
            raise GridError(f"{where}: {prefix}{key}: unknown key (allowed: {', '.join(allowed)})")


def _section(raw: Any, where: str, key: str) -> dict[str, Any]:
    """A base section (nested or dotted) -> dotted overrides with known field names."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise GridError(f"{where}: {key}: expected a mapping of TrainConfig fields, got {quote(raw)}")
    try:
        return flatten_dict(raw)
    except ConfigError as exc:
        raise GridError(f"{where}: {key}: {exc}") from None


def _axes_mapping(raw: Any, where: str, key: str, allow_null: bool = False) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise GridError(f"{where}: {key}: expected a mapping of axis name -> list of values, got {quote(raw)}")
    for name, values in raw.items():
        if values is None and allow_null:
            continue
        if not isinstance(values, list) or not values:
            removal = " (or null to remove the grid's axis)" if allow_null else ""
            raise GridError(f"{where}: {key}.{name}: expected a non-empty list of values{removal}, got {quote(values)}")
    return dict(raw)


def _parse_axis(name: Any, values: list[Any], where: str, key: str) -> Axis:
    """A field axis (dotted field name) or a zipped axis (any other name, values are override mappings)."""
    if not isinstance(name, str) or not name:
        raise GridError(f"{where}: {key}.{name!r}: an axis name is a string")
    try:
        tp = field_type(name)
        is_field, problem = True, None
    except ConfigError as exc:
        is_field, problem = False, exc
    if is_field:
        from dataclasses import is_dataclass

        if is_dataclass(tp):
            raise GridError(f"{where}: {key}.{name}: is a section; use {name}.<field> as the axis name")
        out = []
        for i, value in enumerate(values):
            try:
                out.append({name: coerce(name, value)})
            except ConfigError as exc:
                raise GridError(f"{where}: {key}.{name}[{i}]: {exc}") from None
        return Axis(name, tuple(out))
    if "." in name:  # meant as a field: report the schema's message
        raise GridError(f"{where}: {key}.{name}: {problem}")
    out = []
    for i, value in enumerate(values):
        if not isinstance(value, dict) or not value:
            top = ", ".join(sorted({n.split(".")[0] for n in field_names()}))
            raise GridError(
                f"{where}: {key}.{name}: '{name}' is not a TrainConfig field (top-level fields: {top}), so it is "
                f"read as a zipped axis, whose values must be non-empty {{field: value}} mappings; item {i} is "
                f"{quote(value)}"
            )
        try:
            flat = flatten_dict(value)
            out.append({field_name: coerce(field_name, v) for field_name, v in flat.items()})
        except ConfigError as exc:
            raise GridError(f"{where}: {key}.{name}[{i}]: {exc}") from None
    return Axis(name, tuple(out))


def _axes_for(grid: Grid, preset: str) -> list[Axis]:
    """The grid's axes with the preset's replacements; checks that no two axes set the same field."""
    where = str(grid.path)
    merged: dict[str, tuple[str, Any]] = {name: ("axes", values) for name, values in grid.axes.items()}
    for name, values in grid.presets[preset].axes.items():
        if values is None:
            if name not in merged:
                raise GridError(f"{where}: presets.{preset}.axes.{name}: null removes a grid axis, but the grid "
                                f"has no axis {name!r} (axes: {', '.join(grid.axes) or 'none'})")
            del merged[name]
        else:
            merged[name] = (f"presets.{preset}.axes", values)
    axes: list[Axis] = []
    owner: dict[str, str] = {}
    for name, (key, values) in merged.items():
        axis = _parse_axis(name, values, where, key)
        for field_name in sorted(axis.fields):
            if field_name in owner:
                raise GridError(f"{where}: {key}.{name}: sets {field_name}, which axis {owner[field_name]!r} "
                                f"already sets (each field may belong to one axis only)")
            owner[field_name] = name
        axes.append(axis)
    return axes


def load_scales(path: Path = SCALES_FILE) -> dict[str, dict[str, Any]]:
    """preset name -> dotted overrides shared by every grid's preset of that name."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise GridError(f"{path}: cannot read the preset scales ({exc})") from None
    if not isinstance(data, dict):
        raise GridError(f"{path}: expected a mapping of preset name -> TrainConfig overrides")
    return {name: _section(raw, str(path), name) for name, raw in data.items()}


# --- expansion -----------------------------------------------------------------------------------------------
def expand(
    grid: Grid,
    preset: str,
    overrides: dict[str, Any] | None = None,
    check_paths: bool = True,
) -> list[Cell]:
    """Every cell of ``grid`` at ``preset``, resolved and hashed; GridError on any invalid cell.

    ``overrides`` (dotted, from ``--set``) apply over the base and may not touch a field an axis sets.
    ``check_paths`` checks that data.root directories and model.teacher_path files exist.
    """
    where = f"{grid.path}: preset {preset!r}"
    if preset not in grid.presets:
        raise GridError(f"{grid.path}: preset {preset!r} is not defined in grid {grid.name!r} "
                        f"(presets: {', '.join(grid.presets)})")
    axes = _axes_for(grid, preset)
    axis_fields = {name: axis.key for axis in axes for name in axis.fields}
    base = {**load_scales().get(preset, {}), **grid.base, **grid.presets[preset].base}
    for name, value in (overrides or {}).items():
        if name in axis_fields:
            raise GridError(f"{where}: --set {name}: is set by the grid's axis {axis_fields[name]!r}; "
                            f"change the grid file (or a copy of it) instead")
        base[name] = value
    if grid.search is not None:  # a search grid's cells are its random pools (pipeline.search)
        from pipeline.search import pool_cells

        return pool_cells(grid, preset, base, lambda flat, label, tags: make_cell(grid, flat, label, where,
                                                                                  check_paths, tags))
    cells: list[Cell] = []
    seen: dict[str, dict[str, Any]] = {}
    for combo in itertools.product(*(axis.values for axis in axes)):
        label = {axis.key: _label_value(axis, choice) for axis, choice in zip(axes, combo, strict=True)}
        flat = dict(base)
        for choice in combo:
            flat.update(choice)
        cell = make_cell(grid, flat, label, where, check_paths)
        if cell.hash in seen:
            raise GridError(f"{where}: cells {seen[cell.hash]} and {label} resolve to the same config "
                            f"(config_hash {cell.hash}); remove one or make an axis tell them apart")
        seen[cell.hash] = label
        cells.append(cell)
    return with_step1_cells(cells)


def with_step1_cells(cells: list[Cell]) -> list[Cell]:
    """Each stage-step2 cell preceded by its step-1 cell (the same config with stage step1), added when the grid
    does not list it: two-step training is one grid cell to the user, two trials to the pipeline."""
    present = {cell.hash for cell in cells}
    out: list[Cell] = []
    for cell in cells:
        if cell.config.stage == "step2":
            step1 = step1_config(cell.config)
            digest = config_hash(step1)
            if digest not in present:
                present.add(digest)
                out.append(Cell(cell.grid, cell.experiment, step1, digest, {**cell.label, "stage": "step1"}))
        out.append(cell)
    return out


def make_cell(grid: Grid, flat: dict[str, Any], label: dict[str, Any], where: str, check_paths: bool = True,
              tags: dict[str, str] | None = None) -> Cell:
    """One cell from dotted overrides: environment expanded, resolved, checked and hashed (GridError if invalid)."""
    try:
        flat = {name: _expand_env(value, name) for name, value in flat.items()}
        config = resolve(from_flat(flat))
    except ConfigError as exc:
        cell = f" cell {label}" if label else ""
        raise GridError(f"{where}:{cell}: {exc}") from None
    if check_paths:
        _check_paths(config, where)
    return Cell(grid.name, grid.experiment, config, config_hash(config), label, dict(tags or {}))


def _label_value(axis: Axis, choice: dict[str, Any]) -> Any:
    if len(choice) == 1 and axis.key in choice:
        value = choice[axis.key]
        return list(value) if isinstance(value, tuple) else value
    return {k: list(v) if isinstance(v, tuple) else v for k, v in choice.items()}


def _expand_env(value: Any, name: str) -> Any:
    if not isinstance(value, str) or "${" not in value:
        return value

    def substitute(match: re.Match[str]) -> str:
        var, default = match.group(1), match.group(2)
        if var in os.environ:
            return os.environ[var]
        if default is not None:
            return default
        raise GridError(f"{name}: environment variable {var} is not set (set it, or write ${{{var}:-default}})")

    return _ENV.sub(substitute, value)


def _check_paths(config: TrainConfig, where: str) -> None:
    root = config.data.root
    if root is not None and not Path(root).is_dir():
        raise GridError(f"{where}: data.root: directory {root!r} does not exist (point it at the {config.data.name} "
                        f"files, e.g. --set data.root=DIR)")
    teacher = config.model.teacher_path
    if teacher is not None and not Path(teacher).is_file():
        raise GridError(f"{where}: model.teacher_path: file {teacher!r} does not exist (a torchvision ResNet-34 "
                        f"state_dict, e.g. --set model.teacher_path=FILE)")


def load_cells(
    specs: list[str] | None,
    preset: str,
    overrides: dict[str, Any] | None = None,
    check_paths: bool = True,
) -> list[tuple[Grid, list[Cell]]]:
    """Resolve grid names/paths (None: every built-in grid) and expand them all; GridError before any work."""
    paths = [find_grid(spec) for spec in specs] if specs else builtin_grids()
    grids = [load_grid(path) for path in paths]
    names: dict[str, Path] = {}
    for grid in grids:
        if grid.name in names and names[grid.name] != grid.path:
            raise GridError(f"{grid.path}: name: {grid.name!r} is also the name of {names[grid.name]}")
        names[grid.name] = grid.path
    missing = [g for g in grids if preset not in g.presets]
    if missing:
        having = [g.name for g in grids if preset in g.presets]
        raise GridError(
            f"--preset {preset}: not defined in grid(s) {', '.join(f'{g.name} ({g.path})' for g in missing)}"
            + (f"; grids that have it: {', '.join(having)}" if having else "")
            + f" (presets of {missing[0].name}: {', '.join(missing[0].presets)})"
        )
    unique = list({g.path.resolve(): g for g in grids}.values())
    return [(grid, expand(grid, preset, overrides, check_paths)) for grid in unique]
