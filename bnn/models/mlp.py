"""Binary MLP for Fashion-MNIST and digits: binary hidden Linear layers with BatchNorm and sign activations between
them, a real last layer, and a first layer that is binary (BinaryNet style: real pixels x binary weights) or real.

The binary first layer is the default because it makes the binary weights carry the accuracy: with it, weights
frozen at init score far below trained ones; with a real first layer they barely differ (paper.md section 6)."""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Sequence

import torch
from torch import nn

from bnn.layers import BinaryLinear
from bnn.models.activations import SignActivation


class BinaryMLP(nn.Module):
    """in -> fc_in (binary or real) -> [bn, sign, binary fc]* -> bn, sign -> fc_out (real).

    With hidden (512, 512, 512) the hidden binary layers are fc1 (512x512) and fc2 (512x512), plus fc_in
    (in x 512) when ``first_layer`` is "binary".
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        hidden: Sequence[int],
        num_classes: int,
        weight_mode: str = "latent",
        weight_ste: str = "identity",
        activation_ste: str = "bireal",
        scaling: bool = False,
        first_layer: str = "binary",
    ) -> None:
        super().__init__()
        if len(hidden) < 2:
            raise ValueError(
                f"model.hidden: the mlp needs at least 2 hidden widths (its binary layers sit between them), "
                f"got {list(hidden)}"
            )
        in_features = math.prod(input_shape)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        layers["flatten"] = nn.Flatten()
        # No bias where a BatchNorm follows: it would be cancelled by the BN's mean subtraction.
        if first_layer == "binary":
            layers["fc_in"] = BinaryLinear(
                in_features, hidden[0], weight_mode=weight_mode, weight_ste=weight_ste, scaling=scaling
            )
        elif first_layer == "real":
            layers["fc_in"] = nn.Linear(in_features, hidden[0], bias=False)
        else:
            raise ValueError(f"model.first_layer: expected 'binary' or 'real', got {first_layer!r}")
        layers["bn_in"] = nn.BatchNorm1d(hidden[0])
        layers["act_in"] = SignActivation(activation_ste)
        for i, (width_in, width_out) in enumerate(zip(hidden[:-1], hidden[1:]), start=1):
            layers[f"fc{i}"] = BinaryLinear(
                width_in, width_out, weight_mode=weight_mode, weight_ste=weight_ste, scaling=scaling
            )
            layers[f"bn{i}"] = nn.BatchNorm1d(width_out)
            layers[f"act{i}"] = SignActivation(activation_ste)
        layers["fc_out"] = nn.Linear(hidden[-1], num_classes)
        self.layers = nn.Sequential(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
