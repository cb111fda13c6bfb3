"""The networks of wmhp, chosen by ``ModelConfig.name``: build_model(cfg, weight_mode, num_classes, input_shape).

Every binary weight lives in a BinaryLinear / BinaryConv2d (bnn.layers), so bnn.layers.split_parameters and
binary_layers find them; everything else (first and last layers, BatchNorm, PReLU, learnable shifts) is real.
"""

from __future__ import annotations

from typing import Callable, Sequence

from torch import nn

from bnn.config import ConfigError, ModelConfig
from bnn.layers import WEIGHT_MODES
from bnn.models.mlp import BinaryMLP
from bnn.models.reactnet import ReActNetA
from bnn.models.resnet20 import BinaryResNet20

__all__ = ["MODELS", "build_model", "BinaryMLP", "BinaryResNet20", "ReActNetA"]

MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": BinaryMLP,
    "resnet20": BinaryResNet20,
    "reactnet_a": ReActNetA,
}


def build_model(cfg: ModelConfig, weight_mode: str, num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """The network named by ``cfg.name`` for inputs of ``input_shape`` (C, H, W) and ``num_classes`` outputs.

    weight_mode "latent": binary layers binarize real latent weights in the forward pass (SGD / Adam).
    weight_mode "binary": binary weights hold exactly +-1 (Bop, the gradient filter): the binary layers start
    them at the sign of PyTorch's default init. The training loop re-initialises binary weights with the
    config's distribution and scale and binarizes them again, so nothing relies on these values.
    """
    if cfg.name not in MODELS:
        raise ConfigError(f"model.name: expected one of {sorted(MODELS)}, got {cfg.name!r}")
    if weight_mode not in WEIGHT_MODES:
        raise ValueError(f"weight_mode: expected one of {WEIGHT_MODES}, got {weight_mode!r}")
    if weight_mode == "binary" and cfg.scaling:
        raise ConfigError(
            "model.scaling: true needs latent weights (binary_opt sgd or adam); bop and filter keep every "
            "binary weight at exactly +-1"
        )
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes: expected an int >= 2, got {num_classes!r}")
    _check_input_shape(cfg.name, input_shape)
    options = dict(weight_mode=weight_mode, weight_ste=cfg.weight_ste, activation_ste=cfg.activation_ste,
                   scaling=cfg.scaling)  # fmt: skip
    try:
        if cfg.name == "mlp":
            model = BinaryMLP(input_shape, cfg.hidden, num_classes, first_layer=cfg.first_layer, **options)
        else:
            model = MODELS[cfg.name](input_shape, num_classes, **options)
    except ValueError as exc:
        if str(exc).startswith("model."):
            raise ConfigError(str(exc)) from None
        raise
    return model


def _check_input_shape(name: str, input_shape: Sequence[int]) -> None:
    ok = len(input_shape) >= 1 and all(isinstance(d, int) and d >= 1 for d in input_shape)
    if name != "mlp":
        # ReActNet-A halves the resolution 5 times; ResNet-20 twice.
        min_side = 32 if name == "reactnet_a" else 4
        ok = ok and len(input_shape) == 3 and min(input_shape[1:]) >= min_side
        if not ok:
            raise ValueError(f"input_shape: {name} expects (channels, height, width) with sides >= {min_side}, "
                             f"got {tuple(input_shape)}")  # fmt: skip
    elif not ok:
        raise ValueError(f"input_shape: expected a tuple of positive ints, got {tuple(input_shape)}")
