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
