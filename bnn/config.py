"""The one TrainConfig schema: every hyperparameter name in wmhp comes from here.

Grid axes, MLflow params and parquet columns all use these field names, dotted for nesting
(``binary_opt.alpha``). ``resolve`` fills derived values (the filter's alpha/gamma mapped from latent
settings) so that a resolved config says everything a run does, and ``config_hash`` names it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints


class ConfigError(ValueError):
    """Bad user input in a config: the message names the field and what is allowed."""


QUOTE_LIMIT = 200  # characters of an offending input an error message quotes (a 50 MB YAML list is not echoed)


def yaml_problem(exc: Exception) -> str:
    """A YAML parse error on one line ("expected ..., line 3, column 19"), without the echoed source text."""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{problem}{where}"[:QUOTE_LIMIT]


def quote(value: Any, limit: int = QUOTE_LIMIT) -> str:
    """repr(value), cut to ``limit`` characters with a note of how much was left out."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit} more characters)"


# Field metadata: a result-neutral field says where or how fast a run happens, not what it computes (where the data
# lives, loader workers, device, evaluation batch size). Its value is left out of a config's identity
# (``identity_dict``, ``config_hash``), so a cell run with another data root or worker count is the same cell, and
# analysis averages over it (``neutral_fields``). "presence": only whether the field is set changes results.
NEUTRAL = "neutral"


def _neutral(default: Any, how: bool | str = True) -> Any:
    return field(default=default, metadata={NEUTRAL: how})


@dataclass(frozen=True)
class ModelConfig:
    # mlp: the digits/Fashion-MNIST presets train it in seconds on a CPU, and E1-E8 study the optimizer, not
    # the architecture; resnet20 (CIFAR-10) and reactnet_a (ImageNet) are the paper's scales.
    name: Literal["mlp", "resnet20", "reactnet_a"] = "mlp"
    # mlp only: in->h[0], binary h[i]->h[i+1], real h[-1]->out. 512 wide: enough binary weights for the flip
    # statistics to mean something, at a cost the cpu preset affords.
    hidden: tuple[int, ...] = (512, 512, 512)
    # mlp only. "binary" (BinaryNet style: real pixels x binary weights) makes the binary weights carry the
    # accuracy: frozen at init they score far below trained (paper.md section 6); "real" keeps in->h[0] real.
    first_layer: Literal["binary", "real"] = "binary"
    # Identity keeps dL/dw = dL/db, which the latent<->filter equivalence needs; "clipped" is larq's ste_sign;
    # "reactnet" is the official code's step-2 HardBinaryConv: mean|w| scaling built in (detached), clamp estimator
    # with the gradient not multiplied by the scale (bnn/layers.py). Binary weights (bop, filter) ignore it.
    weight_ste: Literal["identity", "clipped", "reactnet"] = "identity"
    # Bi-Real's piecewise-quadratic estimator: the one the official ReActNet-A code uses (paper.md section 4).
    activation_ste: Literal["bireal", "clipped"] = "bireal"
    # Off: per-channel mean|w| scaling exists only for latent weights, and the filter/Bop keep +-1 weights (a
    # scaled latent net is no longer the filter's twin); resolve refuses it with bop, filter or frozen.
    scaling: bool = False
    # reactnet_a: torchvision ResNet-34 state_dict for distillation. None: plain cross-entropy, the only loss the
    # small presets need. Result-neutral up to its presence: which path holds the teacher does not matter.
    teacher_path: str | None = _neutral(None, "presence")


@dataclass(frozen=True)
class DataConfig:
    # digits ships with scikit-learn (nothing to download), so a fresh checkout and the tests train at once.
    name: Literal["digits", "fashion-mnist", "cifar10", "imagenet"] = "digits"
    # Directory holding the dataset files; None = the dataset's default places. Result-neutral: where the files
    # lie does not change a run.
    root: str | None = _neutral(None)
    # False: a run never reaches the network behind the user's back; result-neutral (the same files either way).
    download: bool = _neutral(False)
    # On: the CIFAR-10/ImageNet recipes (random crop + flip) the reference numbers were measured with.
    augment: bool = True
    # None: the whole training set; presets cut it to fit a CPU budget (fixed by the split seed).
    train_subset: int | None = None
    # Held out from the training set (before train_subset) for every selection: best epoch, best cell, searched
    # setting. The test set is reported, never selected on. 0 = no validation split (val metrics are NaN).
    # 10 %: enough examples to rank cells, few enough to leave training data nearly whole.
    val_fraction: float = 0.1
    # imagenet DataLoader workers. Result-neutral (the augmentation seed is per example, bnn/data/imagenet.py);
    # 2 fits a laptop, clusters raise it.
    num_workers: int = _neutral(2)


DEFAULT_FILTER = {"alpha": 1e-3, "gamma": 0.1}  # the filter setting of grids e6-e8: trains every preset


@dataclass(frozen=True)
class BinaryOptConfig:
    """Optimizer of the binary weights. Which fields apply depends on ``name``:

    sgd: lr, momentum, weight_decay (L2). adam: lr, beta1, beta2, eps, weight_decay, decay_mode.
    bop: gamma (Bop's adaptivity rate), threshold. filter: alpha, gamma, state_init; alpha None maps lr,
    weight_decay and momentum exactly to (alpha, gamma) through bnn.mapping, or, with weight_decay 0 and gamma
    None (the schema defaults: nothing to map from), takes DEFAULT_FILTER, so that a bare ``wmhp train`` trains a
    sensible model. frozen: the control, binary weights stay at the signs of their init (real-valued parameters
    train as usual).
    """

    # The paper's optimizer: what this project is about, so the default a bare ``wmhp train`` shows.
    name: Literal["sgd", "adam", "bop", "filter", "frozen"] = "filter"
    # 0.1: a step large against the 1e-3 init scale, so latent SGD flips signs from its first steps.
    lr: float = 0.1
    # 0: plain SGD, so alpha = lr * weight_decay alone sets the filter (gamma = 1); grids set momentum explicitly.
    momentum: float = 0.0
    # 0: the official ImageNet recipe (paper.md section 4); without decay the latent weight is a pure accumulator.
    weight_decay: float = 0.0
    # l2: torch.optim.Adam's own form (decay in the gradient); "decoupled" (AdamW) is a different algorithm
    # (paper.md section 2), so a grid has to ask for it by name.
    decay_mode: Literal["l2", "decoupled"] = "l2"
    # Kingma & Ba's defaults (torch's too): a grid that names none of them gets the Adam everyone means.
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    # None: derived in resolve (mapped from lr/weight_decay/momentum, or DEFAULT_FILTER), so one config can say
    # "the filter equivalent to this latent SGD" without the user doing the mapping.
    alpha: float | None = None
    gamma: float | None = None
    # 0: Bop is then the filter at gamma = 1 bit for bit (bnn/optim/bop.py), so the two compare directly.
    threshold: float = 0.0
    # filter only. "zero": m = x = 0, the paper's optimizer (its first step overwrites the init's signs).
    # "latent": the state latent SGD at (lr, alpha*gamma/lr) would be in after its init w0, x0 = m0 =
    # -(alpha*gamma/lr) w0 (bnn.mapping.filter_state_from_latent), so the filter and latent SGD from the same
    # random init are one optimizer.
    state_init: Literal["zero", "latent"] = "zero"


@dataclass(frozen=True)
class RealOptConfig:
    """Optimizer of the real-valued parameters (BatchNorm, first and last layers, biases)."""

    # Adam at 1e-3, no decay: the official code's optimizer for the real-valued parameters (paper.md section 4),
    # so only the binary weights' optimizer changes between cells.
    name: Literal["adam", "sgd"] = "adam"
    lr: float = 1e-3
    momentum: float = 0.9  # sgd only: the usual CIFAR value, should a grid switch the real optimizer to sgd
    weight_decay: float = 0.0


@dataclass(frozen=True)
class InitConfig:
    """Latent-weight initialisation: Uniform(-scale, scale) or Normal(0, scale).

    scale must be > 0: an all-zero init makes every binary weight +1 (sign(0) = +1), a symmetric network that
    cannot learn (19.9 % measured with a binary first layer), so it is refused rather than silently broken.
    """

    # Uniform(-1e-3, 1e-3): the official code's latent init (paper.md section 4); small, so latent SGD forgets it
    # quickly (E3 varies the scale).
    distribution: Literal["uniform", "normal"] = "uniform"
    scale: float = 1e-3


@dataclass(frozen=True)
class ScheduleConfig:
    """Per-epoch multiplier on every learning rate, and so on alpha (paper.md section 3)."""

    # linear 1 - e/E per epoch: the official code's decay of alpha and of the real-valued lr (paper.md section 3).
    name: Literal["constant", "linear", "cosine", "step"] = "linear"
    # step: multiply by step_factor every step_epochs epochs. 30 x 0.1: the classic ImageNet step schedule.
    step_epochs: int = 30
    step_factor: float = 0.1


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    binary_opt: BinaryOptConfig = field(default_factory=BinaryOptConfig)
    real_opt: RealOptConfig = field(default_factory=RealOptConfig)
    init: InitConfig = field(default_factory=InitConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    epochs: int = 10  # a quick bare ``wmhp train``; every preset and grid sets its own
    batch_size: int = 128  # CIFAR-10's usual batch (paper.md section 4); small enough for CPU steps to be quick
    # 1000: fewer evaluation steps; result-neutral (evaluation is in eval mode, BatchNorm uses running stats).
    eval_batch_size: int = _neutral(1000)
    seed: int = 0
    # auto: CUDA when present, else the CPU, so one grid file serves a laptop and a cluster. Result-neutral: the
    # identity of a cell is its hyperparameters, not the machine that ran it.
    device: Literal["auto", "cpu", "cuda"] = _neutral("auto")
    # float32: what every published BNN trains in; float64 exists for the bit-level equivalence checks.
    dtype: Literal["float32", "float64"] = "float32"
    # CUDA only (a no-op on the CPU, whose kernels are deterministic already): torch deterministic algorithms,
    # CUBLAS_WORKSPACE_CONFIG=:4096:8, cuDNN benchmark off. Cost: the convolution algorithms cuDNN would pick by
    # benchmarking are given up, and cuBLAS keeps a fixed 8 x 4 MiB workspace; the slowdown is model-dependent and
    # could not be measured on the CPU-only machine that wrote this (benchmarks/gpu_check.sh measures it on a GPU).
    deterministic: bool = False
    # Two-step training of the latent baselines (paper.md section 4): step1 trains real weights with binary
    # activations; step2 (both binary) starts from the step-1 run of the same config with stage step1
    # (bnn.train's init_from). The filter and Bop train in one step ("single").
    stage: Literal["single", "step1", "step2"] = "single"


# --- allowed ranges: (predicate, description); checked on every config, resolved or not -----------------
_RANGES: dict[str, tuple[typing.Callable[[Any], bool], str]] = {
    "model.hidden": (
        lambda v: len(v) >= 2 and all(h >= 1 for h in v),
        "a list of >= 2 positive ints (the mlp's binary layers sit between consecutive widths)",
    ),
    "data.train_subset": (lambda v: v is None or v >= 1, "null or an int >= 1"),
    "data.num_workers": (lambda v: v >= 0, "an int >= 0"),
    "data.val_fraction": (lambda v: 0 <= v <= 0.5, "a float in [0, 0.5]"),
    "binary_opt.lr": (lambda v: v > 0, "a float > 0"),
    "binary_opt.momentum": (lambda v: 0 <= v < 1, "a float in [0, 1)"),
    "binary_opt.weight_decay": (lambda v: v >= 0, "a float >= 0"),
    "binary_opt.beta1": (lambda v: 0 <= v < 1, "a float in [0, 1)"),
    "binary_opt.beta2": (lambda v: 0 <= v < 1, "a float in [0, 1)"),
    "binary_opt.eps": (lambda v: v > 0, "a float > 0"),
    "binary_opt.alpha": (lambda v: v is None or 0 < v <= 1, "null or a float in (0, 1]"),
    "binary_opt.gamma": (lambda v: v is None or 0 < v <= 1, "null or a float in (0, 1]"),
    "binary_opt.threshold": (lambda v: v >= 0, "a float >= 0"),
    "real_opt.lr": (lambda v: v > 0, "a float > 0"),
    "real_opt.momentum": (lambda v: 0 <= v < 1, "a float in [0, 1)"),
    "real_opt.weight_decay": (lambda v: v >= 0, "a float >= 0"),
    "init.scale": (lambda v: v > 0, "a float > 0 (a zero init makes every binary weight +1: a symmetric net)"),
    "schedule.step_epochs": (lambda v: v >= 1, "an int >= 1"),
    "schedule.step_factor": (lambda v: 0 < v <= 1, "a float in (0, 1]"),
    "epochs": (lambda v: v >= 1, "an int >= 1"),
    "batch_size": (lambda v: v >= 1, "an int >= 1"),
    "eval_batch_size": (lambda v: v >= 1, "an int >= 1"),
    "seed": (lambda v: 0 <= v < 2**63, "an int in [0, 2**63)"),  # torch.manual_seed's range
}


# --- flat (dotted) view -----------------------------------------------------------------------------------
def to_dict(config: Any) -> dict[str, Any]:
    """Nested plain dict (tuples as lists), as written to YAML and JSON."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def flatten(config: TrainConfig) -> dict[str, Any]:
    """``{"binary_opt.alpha": 0.001, ...}``: the names of grid axes, MLflow params and parquet columns."""
    out: dict[str, Any] = {}

    def walk(prefix: str, node: dict[str, Any]) -> None:
        for key, value in node.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict):
                walk(name + ".", value)
            else:
                out[name] = value

    walk("", to_dict(config))
    return out


def field_names() -> list[str]:
    """Every dotted TrainConfig field name, in schema order."""
    return list(flatten(TrainConfig()).keys())


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    # get_type_hints evaluates every annotation string each call: seconds when a launch validates ~100 cells.
    return get_type_hints(cls)


def field_type(name: str) -> Any:
    """The annotated type of a dotted field name; ConfigError for an unknown name."""
    cls: Any = TrainConfig
    parts = name.split(".")
    for i, part in enumerate(parts):
        hints = _type_hints(cls)
        if part not in hints:
            where = ".".join(parts[:i]) or "the top level"
            allowed = ", ".join(sorted(hints))
            raise ConfigError(f"unknown key '{name}': '{part}' is not a field of {where} (allowed: {allowed})")
        cls = hints[part]
        if i < len(parts) - 1 and not is_dataclass(cls):
            raise ConfigError(f"unknown key '{name}': '{'.'.join(parts[: i + 1])}' has no sub-fields")
    return cls


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in get_args(tp))
    if origin is tuple:
        return "a list of ints"
    return {int: "an int", float: "a float", bool: "true or false", str: "a string"}.get(tp, str(tp))


def coerce(name: str, value: Any, tp: Any | None = None) -> Any:
    """Check ``value`` against the field's type and convert YAML quirks (``1e-3`` read as a string)."""
    tp = field_type(name) if tp is None else tp
    origin = get_origin(tp)
    bad = ConfigError(f"{name}: expected {_type_name(tp)}, got {quote(value)}")
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(name, value, arg)
            except ConfigError:
                pass
        raise bad
    if origin is Literal:
        if value in get_args(tp) and isinstance(value, str):
            return value
        raise bad
    if origin is tuple:
        if isinstance(value, (list, tuple)):
            return tuple(coerce(name, v, int) for v in value)
        raise bad
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad
    if tp is float:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, (int, float)):
            result = float(value)
        elif isinstance(value, str):
            try:
                result = float(value)
            except ValueError:
                raise bad from None
        else:
            raise bad
        if not math.isfinite(result):
            raise bad
        return result
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    if is_dataclass(tp):
        raise ConfigError(f"{name}: is a section; set its fields as {name}.<field>")
    raise bad  # pragma: no cover - every schema type is handled above


def _check_ranges(config: TrainConfig) -> None:
    flat = flatten(config)
    for name, (ok, allowed) in _RANGES.items():
        if not ok(flat[name]):
            raise ConfigError(f"{name}: expected {allowed}, got {quote(flat[name])}")


def from_flat(overrides: dict[str, Any], base: TrainConfig | None = None) -> TrainConfig:
    """Apply dotted overrides to ``base`` (default: schema defaults). Unknown keys and bad types are rejected."""
    nested: dict[str, Any] = to_dict(base if base is not None else TrainConfig())
    for name, value in overrides.items():
        value = coerce(name, value)
        node = nested
        *parents, leaf = name.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return _build(TrainConfig, nested, "")


def from_dict(data: dict[str, Any], base: TrainConfig | None = None) -> TrainConfig:
    """Build from a nested dict (a YAML file); every key is checked against the schema."""
    return from_flat(flatten_dict(data), base)


def flatten_dict(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested user dict -> dotted keys. Sections must be mappings; the schema decides what is a section."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {quote(data)}")
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        tp = field_type(name)
        if is_dataclass(tp):
            out.update(flatten_dict(value, name + "."))
        else:
            out[name] = value
    return out


def _build(cls: Any, data: dict[str, Any], prefix: str) -> Any:
    hints = _type_hints(cls)
    kwargs = {}
    for f in fields(cls):
        value = data[f.name]
        tp = hints[f.name]
        kwargs[f.name] = _build(tp, value, f"{prefix}{f.name}.") if is_dataclass(tp) else coerce(
            f"{prefix}{f.name}", value, tp
        )
    config = cls(**kwargs)
    if cls is TrainConfig:
        _check_ranges(config)
    return config


def load_yaml(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a config file (nested YAML) and apply dotted ``overrides`` on top."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a UTF-8 text file (byte {exc.start}); expected a YAML config") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({yaml_problem(exc)})") from None
    try:
        config = from_dict(data)
        return from_flat(overrides or {}, config)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` from the command line; the value is read as YAML (so 1e-3, true, [1, 2] work)."""
    import yaml

    if "=" not in text:
        raise ConfigError(f"override {quote(text)}: expected key=value, e.g. binary_opt.alpha=1e-3")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    field_type(key.strip())
    return key.strip(), value


# --- resolution and identity ------------------------------------------------------------------------------
def resolve(config: TrainConfig) -> TrainConfig:
    """Fill derived values so the config states everything a run does.

    filter: alpha None -> (alpha, gamma) mapped exactly from (lr, weight_decay, momentum), or DEFAULT_FILTER
    when weight_decay is 0 and gamma None (nothing to map from); gamma None -> 1.
    bop: gamma None -> 1e-4 (Helwegen et al.'s default adaptivity rate).
    Every rule that joins two fields is checked here, so a grid is refused at validation, not in its trials.
    """
    _check_pairs(config)
    opt = config.binary_opt
    if config.stage != "single" and opt.name not in ("sgd", "adam"):
        raise ConfigError(f"stage: {config.stage!r} is for the latent baselines (binary_opt.name sgd or adam), but "
                          f"binary_opt.name is {opt.name!r}, which trains in one step (stage 'single')")  # fmt: skip
    if opt.name == "filter":
        if opt.alpha is None:
            if opt.gamma is not None:
                raise ConfigError(
                    "binary_opt.gamma: set alpha too, or leave both null to map them from lr, weight_decay and momentum"
                )
            if opt.weight_decay == 0:  # nothing to map from (alpha = lr * weight_decay would be 0)
                opt = replace(opt, **DEFAULT_FILTER)
            else:
                from bnn.mapping import latent_to_filter

                try:
                    alpha, gamma = latent_to_filter(opt.lr, opt.weight_decay, opt.momentum)
                except ValueError as exc:
                    raise ConfigError(f"binary_opt: {exc}") from None
                opt = replace(opt, alpha=alpha, gamma=gamma)
        elif opt.gamma is None:
            opt = replace(opt, gamma=1.0)
    elif opt.name == "bop" and opt.gamma is None:
        opt = replace(opt, gamma=1e-4)
    if opt.state_init != "zero" and opt.name != "filter":
        raise ConfigError(
            f"binary_opt.state_init: {opt.state_init!r} applies to the filter only; binary_opt.name is {opt.name!r} "
            "(leave state_init at 'zero')"
        )
    resolved = replace(config, binary_opt=opt)
    _check_ranges(resolved)
    return resolved


_BINARY_WEIGHTS = ("bop", "filter", "frozen")  # optimizers that keep every binary weight at exactly +-1
# Smallest image side of each dataset as the models see it (imagenet: the 224 crop); reactnet_a halves the
# resolution 5 times and needs >= 32 (bnn.models._check_input_shape).
_IMAGE_SIDE = {"digits": 8, "fashion-mnist": 28, "cifar10": 32, "imagenet": 224}
_MIN_SIDE = {"mlp": 1, "resnet20": 4, "reactnet_a": 32}


def _check_pairs(config: TrainConfig) -> None:
    """Cross-field rules: one line naming both fields."""
    model, opt = config.model, config.binary_opt
    if model.scaling and opt.name in _BINARY_WEIGHTS:
        raise ConfigError(f"model.scaling: true needs latent weights (binary_opt.name sgd or adam), but "
                          f"binary_opt.name is {opt.name!r}, which keeps every binary weight at exactly +-1")  # fmt: skip
    side, needed = _IMAGE_SIDE[config.data.name], _MIN_SIDE[model.name]
    if side < needed:
        fits = ", ".join(name for name, s in _IMAGE_SIDE.items() if s >= needed)
        raise ConfigError(f"model.name: {model.name!r} needs images of side >= {needed}, but data.name "
                          f"{config.data.name!r} has {side}x{side} (use data.name {fits})")  # fmt: skip
    from bnn.data.splits import TRAIN_SIZES  # here: bnn.data.splits imports this module

    data = config.data
    n, n_val = TRAIN_SIZES[data.name], round(data.val_fraction * TRAIN_SIZES[data.name])
    if data.train_subset is not None and data.train_subset > n - n_val:
        raise ConfigError(f"data.train_subset: expected at most {n - n_val} (data.name {data.name!r}: {n} training "
                          f"examples less the {n_val} of data.val_fraction {data.val_fraction}), "
                          f"got {data.train_subset}")  # fmt: skip


def step1_config(config: TrainConfig) -> TrainConfig:
    """The step-1 run a step-2 config starts from: the same config with stage step1 (so no path is in a config)."""
    if config.stage != "step2":
        raise ConfigError(f"stage: only a 'step2' config has a step-1 run, got {config.stage!r}")
    return replace(config, stage="step1")


@functools.cache
def neutral_fields() -> dict[str, bool | str]:
    """Dotted name -> neutral mark (True, or "presence") of every result-neutral field of the schema."""
    out: dict[str, bool | str] = {}

    def walk(cls: Any, prefix: str) -> None:
        hints = _type_hints(cls)
        for f in fields(cls):
            if is_dataclass(hints[f.name]):
                walk(hints[f.name], f"{prefix}{f.name}.")
            elif f.metadata.get(NEUTRAL):
                out[f"{prefix}{f.name}"] = f.metadata[NEUTRAL]

    walk(TrainConfig, "")
    return out


def identity_dict(config: TrainConfig) -> dict[str, Any]:
    """The nested dict that names a run: result-neutral fields at their schema defaults ("presence" ones: the
    default when unset, "<set>" otherwise). Resetting rather than dropping them keeps the hash of every config
    whose neutral fields are at their defaults (the cpu and smoke presets) what it was before they were marked."""
    data = to_dict(config)
    defaults = flatten(TrainConfig())
    for name, how in neutral_fields().items():
        *parents, leaf = name.split(".")
        node = data
        for part in parents:
            node = node[part]
        keep = how == "presence" and node[leaf] is not None
        node[leaf] = "<set>" if keep else defaults[name]
    return data


def canonical_json(config: TrainConfig) -> str:
    """Sorted keys, floats in repr form, neutral fields at their defaults: the text config_hash hashes and a
    checkpoint is matched by (so a run resumes with another data root or worker count)."""
    return json.dumps(identity_dict(config), sort_keys=True, separators=(",", ":"))


def from_params(params: dict[str, str]) -> TrainConfig | None:
    """The config a stored run logged as string params (``str(value)`` of every dotted field), or None when a
    field is missing (the run predates it: its config cannot be known) or a value does not read back."""
    import ast

    values: dict[str, Any] = {}
    for name in field_names():
        if name not in params:
            return None
        text, tp = params[name], field_type(name)
        if tp is str or str in get_args(tp):  # a path: '/data/x' or None, never a number
            values[name] = None if text == "None" else text
            continue
        try:
            values[name] = ast.literal_eval(text)  # numbers, None, True, (512, 512)
        except (ValueError, SyntaxError):
            values[name] = text  # a choice: 'mlp', 'filter'
    try:
        return from_flat(values)
    except ConfigError:
        return None


def config_hash(config: TrainConfig) -> str:
    """Stable 16-hex-digit identity of a resolved config: Tune trial name, MLflow tag, parquet column."""
    return hashlib.sha256(canonical_json(resolve(config)).encode()).hexdigest()[:16]
