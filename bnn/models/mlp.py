"""Binary MLP for Fashion-MNIST and digits: real first and last Linear layers (as the BNN literature keeps them),
binary hidden Linear layers, BatchNorm and sign activations between them."""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Sequence

import torch
from torch import nn

from bnn.layers import BinaryLinear
from bnn.models.activations import SignActivation


class BinaryMLP(nn.Module):
    """in -> fc_in (real) -> [bn, sign, binary fc]* -> bn, sign -> fc_out (real).

    With hidden (512, 512, 512) the binary layers are fc1 (512x512) and fc2 (512x512): len(hidden) - 1 of them.
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
        layers["fc_in"] = nn.Linear(in_features, hidden[0], bias=False)
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
