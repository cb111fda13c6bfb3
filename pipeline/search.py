"""Search grids: hyperparameter searches over sampled spaces, run through the grid machinery (E9).

A grid file with a top-level ``search`` section (and no ``axes``) describes searches instead of a product::

    search:
      metric: val_acc          # what the searchers maximise: a per-epoch metric of bnn.train, last epoch
      seed: 0                  # seeds the random pools and the TPE repeats
      spaces:                  # name -> base overrides + sampled parameters (dotted TrainConfig fields)
        filter:
          base: {binary_opt.name: filter}
          params:
            binary_opt.alpha: {loguniform: [1.0e-3, 1.0e-1]}
            binary_opt.momentum: {loguniform: [1.0e-2, 1.0], complement: true}  # field = 1 - sample
            schedule.name: {choice: [constant, linear]}
      random: {pool: 16}       # random search: a pool of N configs per space, sampled with Tune's domains
      tpe: {repeats: 3, trials: 8, startup: 3}   # Optuna's TPE through Tune: R repeats of B trials per space
    presets:
      smoke: {base: {...}, search: {random: {pool: 3}, spaces: {filter: {params: {...}}}}}  # merged per key

The random pools are ordinary cells (``expand`` returns them), sampled once with a fixed seed per space, so a
rerun finds the same config hashes and the launch's dedup skips the finished ones. TPE trials are proposed while
the launch runs (pipeline.search_run); a rerun replays the finished ones into a fresh searcher. Every run carries
the search tags of wmhp.contract: space, searcher (random / tpe), repeat, index and the sampled point (JSON).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from bnn.config import ConfigError, coerce, field_type
from wmhp.contract import search_tags  # also used by pipeline.search_run

if TYPE_CHECKING:
    from pipeline.grids import Cell, Grid

SEARCH_KEYS = ("metric", "seed", "spaces", "random", "tpe")
PRESET_SEARCH_KEYS = ("random", "tpe", "spaces")
SPACE_KEYS = ("base", "params")
KINDS = ("loguniform", "uniform", "choice")
RANDOM_KEYS = ("pool",)
TPE_KEYS = ("repeats", "trials", "startup")
SEARCHERS = ("random", "tpe")
SIGNIFICANT = 4  # sampled floats are rounded to this many digits: readable params, stable config hashes


@dataclass(frozen=True)
class Param:
    field: str  # dotted TrainConfig field
    kind: str  # loguniform / uniform / choice
    args: tuple[Any, ...]  # (low, high) or the choices
    complement: bool = False  # the field is 1 - the sampled value (momentum, betas: log-spaced near 1)

    def domain(self) -> Any:
        from ray import tune

        if self.kind == "choice":
            return tune.choice(list(self.args))
        return (tune.loguniform if self.kind == "loguniform" else tune.uniform)(*self.args)

    def value(self, sample: Any) -> Any:
        """The config value of one sampled value."""
        if self.kind == "choice":
            return sample
        sample = rounded(float(sample))
        return rounded(1.0 - sample) if self.complement else sample


@dataclass(frozen=True)
class Space:
    name: str
    base: dict[str, Any]
    params: tuple[Param, ...]


@dataclass(frozen=True)
class Search:
    metric: str
    seed: int
    spaces: tuple[Space, ...]
    pool: int
    repeats: int
    trials: int
    startup: int


def rounded(value: float) -> float:
    return float(f"{value:.{SIGNIFICANT}g}") if math.isfinite(value) and value != 0 else value


# --- schema ------------------------------------------------------------------------------------------------
def check_search(grid: Grid) -> None:
    """Structure of a search grid and of every preset's search section (GridError naming the key)."""
    from pipeline.grids import GridError

    where = str(grid.path)
    if grid.search is None:
        raise GridError(f"{where}: presets.*.search: only a grid with a top-level search section may set one")
    if grid.axes:
        raise GridError(f"{where}: axes: a search grid samples its spaces instead; remove axes")
    for preset in grid.presets:
        if grid.presets[preset].axes:
            raise GridError(f"{where}: presets.{preset}.axes: a search grid has no axes")
        parse_search(grid, preset)


def parse_search(grid: Grid, preset: str) -> Search:
    """The grid's search section merged with the preset's (spaces' params and budgets replaced per key)."""
    from pipeline.grids import GridError

    where = f"{grid.path}: search"
    raw = _mapping(grid.search, where, SEARCH_KEYS)
    for key in ("metric", "spaces"):
        if key not in raw:
            raise GridError(f"{where}.{key}: required key is missing")
    over = _mapping(grid.presets[preset].search or {}, f"{grid.path}: presets.{preset}.search", PRESET_SEARCH_KEYS)
    metric = raw["metric"]
    if not isinstance(metric, str) or not metric:
        raise GridError(f"{where}.metric: expected the name of a per-epoch metric (e.g. val_acc), got {metric!r}")
    seed = raw.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise GridError(f"{where}.seed: expected an int >= 0, got {seed!r}")
    budgets: dict[str, int] = {}
    for section, keys in (("random", RANDOM_KEYS), ("tpe", TPE_KEYS)):
        merged = {**_mapping(raw.get(section), f"{where}.{section}", keys),
                  **_mapping(over.get(section), f"{grid.path}: presets.{preset}.search.{section}", keys)}
        for key in keys:
            value = merged.get(key)
            low = 0 if key == "startup" else 1
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise GridError(f"{where}.{section}.{key} (preset {preset}): expected an int >= {low}, got {value!r}")
            budgets[key] = value
    if budgets["startup"] > budgets["trials"]:
        raise GridError(f"{where}.tpe.startup (preset {preset}): at most tpe.trials ({budgets['trials']}), "
                        f"got {budgets['startup']}")
    spaces_raw = raw["spaces"]
    if not isinstance(spaces_raw, dict) or not spaces_raw:
        raise GridError(f"{where}.spaces: expected a non-empty mapping of space name -> {{base, params}}")
    space_over = _mapping(over.get("spaces"), f"{grid.path}: presets.{preset}.search.spaces", tuple(spaces_raw))
    spaces = tuple(
        _space(name, body, space_over.get(name), f"{where}.spaces.{name}", preset)
        for name, body in spaces_raw.items()
    )
    return Search(metric, seed, spaces, budgets["pool"], budgets["repeats"], budgets["trials"], budgets["startup"])


def _mapping(raw: Any, where: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    from pipeline.grids import GridError

    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise GridError(f"{where}: expected a mapping with keys {', '.join(allowed)}, got {str(raw)[:200]!r}")
    for key in raw:
        if key not in allowed:
            raise GridError(f"{where}.{key}: unknown key (allowed: {', '.join(allowed)})")
    return raw


def _space(name: str, body: Any, override: Any, where: str, preset: str) -> Space:
    from pipeline.grids import GridError, _section

    body = _mapping(body, where, SPACE_KEYS)
    override = _mapping(override, f"{where} (preset {preset})", ("params",))
    base = _section(body.get("base"), where, "base")
    params_raw = {**_mapping(body.get("params"), f"{where}.params", tuple(_params_names(body))),
                  **_mapping(override.get("params"), f"{where}.params (preset {preset})",
                             tuple(_params_names(body)))}
    if not params_raw:
        raise GridError(f"{where}.params: expected a non-empty mapping of TrainConfig field -> domain")
    params = []
    for field_name, spec in params_raw.items():
        params.append(_param(field_name, spec, f"{where}.params.{field_name}"))
        if field_name in base:
            raise GridError(f"{where}.params.{field_name}: also set in the space's base; set it in one place")
    return Space(name, base, tuple(params))


def _params_names(body: dict[str, Any]) -> list[str]:
    params = body.get("params")
    return list(params) if isinstance(params, dict) else []


def _param(field_name: str, spec: Any, where: str) -> Param:
    from pipeline.grids import GridError

    try:
        field_type(field_name)
    except ConfigError as exc:
        raise GridError(f"{where}: {exc}") from None
    spec = _mapping(spec, where, (*KINDS, "complement"))
    kinds = [k for k in KINDS if k in spec]
    if len(kinds) != 1:
        raise GridError(f"{where}: expected exactly one of {', '.join(KINDS)} (with optional complement: true)")
    kind, args = kinds[0], spec[kinds[0]]
    complement = spec.get("complement", False)
    if not isinstance(complement, bool) or (complement and kind == "choice"):
        raise GridError(f"{where}.complement: expected true/false, and only on a numeric domain")
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise GridError(f"{where}.choice: expected a non-empty list of values, got {args!r}")
        try:
            values = tuple(coerce(field_name, v) for v in args)
        except ConfigError as exc:
            raise GridError(f"{where}.choice: {exc}") from None
        return Param(field_name, kind, values)
    if (not isinstance(args, list) or len(args) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in args)):
        raise GridError(f"{where}.{kind}: expected [low, high], two numbers, got {args!r}")
    low, high = float(args[0]), float(args[1])
    if not low < high or (kind == "loguniform" and low <= 0):
        raise GridError(f"{where}.{kind}: expected low < high" + (" and low > 0" if kind == "loguniform" else "")
                        + f", got {args!r}")
    return Param(field_name, kind, (low, high), complement)


# --- cells -------------------------------------------------------------------------------------------------
MakeCell = Callable[[dict[str, Any], dict[str, Any], dict[str, str]], "Cell"]


def point_overrides(space: Space, point: dict[str, Any]) -> dict[str, Any]:
    """Sampled values (field -> raw sample) -> dotted config overrides of this space."""
    by_field = {p.field: p for p in space.params}
    return {**space.base, **{name: by_field[name].value(value) for name, value in point.items()}}


def sample_pool(space: Space, size: int, seed: int) -> list[dict[str, Any]]:
    """``size`` points of ``space`` drawn with Tune's own domains and a seeded generator: same seed, same pool."""
    import numpy as np

    rng = np.random.RandomState(seed)
    columns = {}
    for param in space.params:
        drawn = param.domain().sample(size=size, random_state=rng)
        columns[param.field] = [_plain(v) for v in np.atleast_1d(np.asarray(drawn, dtype=object)).tolist()]
    return [{name: values[i] for name, values in columns.items()} for i in range(size)]


def _plain(value: Any) -> Any:
    """numpy scalars -> Python ones; floats rounded (the point is stored as a tag and replayed exactly)."""
    if hasattr(value, "item"):
        value = value.item()
    return rounded(value) if isinstance(value, float) else value


def pool_seed(search: Search, space_index: int) -> int:
    return search.seed * 1000 + space_index


def tpe_seed(search: Search, space_index: int, repeat: int) -> int:
    return search.seed * 1000 + 100 + 10 * space_index + repeat


def pool_cells(grid: Grid, preset: str, base: dict[str, Any], make: MakeCell) -> list[Cell]:
    """The random pools of every space, as cells (GridError on a sample the schema refuses)."""
    from pipeline.grids import GridError

    search = parse_search(grid, preset)
    cells, seen = [], {}
    for index, space in enumerate(search.spaces):
        for i, point in enumerate(sample_pool(space, search.pool, pool_seed(search, index))):
            label = {"space": space.name, "searcher": "random", "index": i}
            cell = make({**base, **point_overrides(space, point)}, label,
                        search_tags(space.name, "random", 0, i, point))
            if cell.hash in seen:
                raise GridError(f"{grid.path}: preset {preset!r}: random samples {seen[cell.hash]} and {label} "
                                f"resolve to the same config (config_hash {cell.hash}); widen the space")
            seen[cell.hash] = label
            cells.append(cell)
    return cells


def search_base(grid: Grid, preset: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The dotted overrides every trial of the grid starts from (scales, base, preset base, --set), env expanded."""
    from pipeline.grids import _expand_env, load_scales

    base = {**load_scales().get(preset, {}), **grid.base, **grid.presets[preset].base, **(overrides or {})}
    return {name: _expand_env(value, name) for name, value in base.items()}
