"""The one config schema: strict overrides, typed coercion, resolution and a stable identity."""

import math

import pytest

from bnn.config import (
    ConfigError,
    TrainConfig,
    config_hash,
    field_names,
    flatten,
    from_dict,
    from_flat,
    load_yaml,
    parse_override,
    resolve,
)


def test_flatten_names_every_field_dotted():
    names = field_names()
    assert "binary_opt.alpha" in names and "model.hidden" in names and "seed" in names
    assert names == list(flatten(TrainConfig()))


def test_yaml_exponent_strings_become_floats():
    # PyYAML reads 1e-3 (no dot) as a string; the schema turns it into the float it means.
    config = from_flat({"binary_opt.alpha": "1e-3", "init.scale": 2})
    assert config.binary_opt.alpha == 1e-3 and isinstance(config.init.scale, float)


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"binary_opt.alpah": 0.1}, "binary_opt.alpah"),
        ({"nope": 1}, "nope"),
        ({"epochs": 2.5}, "epochs"),
        ({"epochs": True}, "epochs"),
        ({"model.scaling": "yes"}, "model.scaling"),
        ({"binary_opt.name": "lamb"}, "binary_opt.name"),
        ({"binary_opt.alpha": 0.0}, "binary_opt.alpha"),
        ({"binary_opt.gamma": 1.5}, "binary_opt.gamma"),
        ({"binary_opt.momentum": 1.0}, "binary_opt.momentum"),
        ({"binary_opt.threshold": -1e-6}, "binary_opt.threshold"),
        ({"binary_opt.lr": float("nan")}, "binary_opt.lr"),
        ({"model.hidden": [64]}, "model.hidden"),
        ({"epochs": 0}, "epochs"),
        ({"model": 3}, "model"),
    ],
)
def test_bad_overrides_name_the_key(overrides, key):
    with pytest.raises(ConfigError) as err:
        from_flat(overrides)
    assert key in str(err.value)


def test_nested_dict_sections_are_checked():
    with pytest.raises(ConfigError, match="binary_opt.bogus"):
        from_dict({"binary_opt": {"bogus": 1}})
    with pytest.raises(ConfigError, match="binary_opt"):
        from_dict({"binary_opt": 0.1})


def test_resolve_maps_filter_from_latent_exactly():
    config = resolve(from_flat({"binary_opt.name": "filter", "binary_opt.lr": 0.1,
                                "binary_opt.weight_decay": 5e-4, "binary_opt.momentum": 0.9}))  # fmt: skip
    assert math.isclose(config.binary_opt.alpha, 5.0227e-4, rel_tol=1e-4)
    assert math.isclose(config.binary_opt.gamma, 0.099548, rel_tol=1e-4)


def test_resolve_rejects_unmappable_filter():
    # Nothing to map from (weight decay 0, the default): the documented default filter, so bare `wmhp train` runs.
    assert resolve(from_flat({"binary_opt.name": "filter"})).binary_opt.alpha == 1e-3
    assert resolve(from_flat({"binary_opt.name": "filter"})).binary_opt.gamma == 0.1
    with pytest.raises(ConfigError, match="binary_opt.gamma"):
        resolve(from_flat({"binary_opt.gamma": 0.5, "binary_opt.weight_decay": 1e-4}))


def test_hash_is_stable_and_sensitive():
    a = from_flat({"binary_opt.alpha": 1e-3})
    assert config_hash(a) == config_hash(from_flat({"binary_opt.alpha": "1e-3", "binary_opt.gamma": 1.0}))
    assert config_hash(a) != config_hash(from_flat({"binary_opt.alpha": 1e-3, "seed": 1}))
    assert len(config_hash(a)) == 16


def test_load_yaml_with_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("binary_opt:\n  name: sgd\n  lr: 1e-2\nepochs: 3\n")
    config = load_yaml(path, dict([parse_override("epochs=5")]))
    assert (config.binary_opt.name, config.binary_opt.lr, config.epochs) == ("sgd", 0.01, 5)
    path.write_text("binary_opt:\n  nme: sgd\n")
    with pytest.raises(ConfigError, match=r"c\.yaml.*binary_opt\.nme"):
        load_yaml(path)
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("epochs")


# --- identity: result-neutral fields ---------------------------------------------------------------------------
def _another_value(name: str, value):
    """A valid value of field ``name`` other than ``value``."""
    from typing import Literal, get_args, get_origin

    from bnn.config import field_type

    tp = field_type(name)
    choices = [a for a in get_args(tp) if a is not type(None)] if get_origin(tp) is not Literal else list(get_args(tp))
    if get_origin(tp) is Literal:
        return next(c for c in choices if c != value)
    special = {"model.hidden": (64, 32), "data.val_fraction": 0.2, "data.train_subset": 100, "seed": 7,
               "binary_opt.alpha": 0.25, "binary_opt.gamma": 0.5, "schedule.step_factor": 0.5,
               "model.teacher_path": "/teacher.pt", "data.root": "/elsewhere"}
    if name in special:
        return special[name]
    if tp is bool:
        return not value
    return value + 1 if tp is int else value * 0.5 if value else 0.5


# The base each field is changed from: stage and state_init need an optimizer they apply to.
_BASE_FOR = {"stage": {"binary_opt.name": "sgd"}, "model.scaling": {"binary_opt.name": "sgd"}}


def test_neutral_fields_leave_the_hash_unchanged_and_every_other_field_changes_it():
    from bnn.config import neutral_fields

    neutral = neutral_fields()
    assert {"data.root", "data.num_workers", "data.download", "device", "eval_batch_size"} <= set(neutral)
    assert not {"seed", "dtype", "binary_opt.lr", "model.name"} & set(neutral)
    for name in field_names():
        base_flat = dict(_BASE_FOR.get(name, {}))
        if name.startswith("binary_opt.") and name.split(".")[1] in ("alpha", "gamma"):
            base_flat = {"binary_opt.alpha": 0.1, "binary_opt.gamma": 0.1}
        base = from_flat(base_flat)
        before = flatten(base)[name]
        changed = from_flat({**base_flat, name: _another_value(name, before)})
        same = config_hash(changed) == config_hash(base)
        if name == "model.teacher_path" or neutral.get(name) is not True:
            assert not same, f"{name}: changing it should change config_hash"
        else:
            assert same, f"{name}: result-neutral, so config_hash should ignore it"
    # "presence": which path holds the teacher does not matter, whether there is one does.
    teacher = from_flat({"model.teacher_path": "/a.pt"})
    assert config_hash(teacher) == config_hash(from_flat({"model.teacher_path": "/b.pt"}))


def test_hashes_of_stored_runs_with_default_neutral_fields_are_unchanged():
    """Neutral fields hash at their defaults, so every stored cpu/smoke run keeps its config_hash (values computed
    before the fields were marked)."""
    assert config_hash(TrainConfig()) == "c0536213d8dcd715"
    cell = {"binary_opt.name": "sgd", "binary_opt.weight_decay": 0.2, "data.name": "fashion-mnist", "init.scale": 10.0}
    assert config_hash(from_flat(cell)) == "ecde6f9f19f06853"


# --- cross-field rules live in resolve -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "flat, first, second",
    [
        ({"model.scaling": True, "binary_opt.name": "filter"}, "model.scaling", "binary_opt.name"),
        ({"model.scaling": True, "binary_opt.name": "bop"}, "model.scaling", "binary_opt.name"),
        ({"model.name": "reactnet_a", "data.name": "digits"}, "model.name", "data.name"),
        ({"stage": "step1", "binary_opt.name": "filter"}, "stage", "binary_opt.name"),
        ({"binary_opt.state_init": "latent", "binary_opt.name": "sgd"}, "binary_opt.state_init", "binary_opt.name"),
        # within digits' 1437 training examples, but not once data.val_fraction's 144 are held out
        ({"data.train_subset": 1300, "data.name": "digits"}, "data.train_subset", "data.val_fraction"),
    ],
)
def test_cross_field_conflicts_are_refused_by_resolve_naming_both_fields(flat, first, second):
    with pytest.raises(ConfigError) as info:
        resolve(from_flat(flat))
    message = str(info.value)
    assert message.startswith(first) and second in message and "\n" not in message
    resolve(from_flat({**flat, "binary_opt.name": "sgd", "data.name": "cifar10", "stage": "single",
                       "binary_opt.state_init": "zero"}))  # the same fields, compatible: accepted


def test_a_stored_runs_params_read_back_into_its_config():
    from bnn.config import from_params

    config = resolve(from_flat({"data.root": "/d", "model.hidden": [64, 32], "binary_opt.name": "bop",
                                "model.teacher_path": "/t.pt", "data.name": "cifar10", "model.name": "resnet20"}))
    params = {name: "None" if v is None else str(v) for name, v in flatten(config).items()}
    assert from_params(params) == config
    del params["seed"]  # a run older than a field: its config cannot be known
    assert from_params(params) is None
