"""Binary layers, in one of two weight modes.

latent: ``weight`` is a real-valued latent weight; the forward pass uses sign(weight) (times mean|w| per output
    channel when ``scaling``), and gradients reach ``weight`` through a straight-through estimator. Trained by
    latent SGD / Adam.
binary: ``weight`` holds exactly -1 or +1 (from construction: the sign of PyTorch's default init) and is used
    as is, so its gradient is dL/db at b = +-1 with no clipping. Trained by Bop and the gradient filter,
    which flip signs instead of adding to magnitudes.
real: ``weight`` is used as is, real-valued: step 1 of two-step training (binary activations, real weights).

weight_ste "reactnet" is the latent path of the official code's step-2 ``HardBinaryConv``
(jorisquist/Understanding-WM-HP-in-BNNs, imagenet/step2/reactnet.py): forward mean|w| * sign(w) per output
channel with the scale detached, backward the gradient of clamp(w, -1, 1), i.e. dL/dw = dL/db where |w| <= 1
and 0 elsewhere, *not* multiplied by the scale. Its scaling is built in, so ``scaling`` stays false with it.
"""

from __future__ import annotations

from typing import Iterable, Literal

import torch
import torch.nn.functional as F
from torch import nn

from bnn.binarize import binarize_, sign, sign_ste

WeightMode = Literal["latent", "binary", "real"]
WEIGHT_MODES = ("latent", "binary", "real")


class BinaryLayer(nn.Module):
    """Mixin marking a module whose ``weight`` is binary; see the module docstring for the two modes."""

    weight: nn.Parameter
    weight_mode: WeightMode
    weight_ste: str
    scaling: bool

    def _init_binary(self, weight_mode: str, weight_ste: str, scaling: bool) -> None:
        if weight_mode not in WEIGHT_MODES:
            raise ValueError(f"weight_mode: expected one of {WEIGHT_MODES}, got {weight_mode!r}")
        if weight_mode == "binary" and scaling:
            raise ValueError("scaling: per-channel mean|w| scaling needs weight_mode='latent' (|b| = 1 always)")
        if weight_ste == "reactnet" and scaling:
            raise ValueError("model.scaling: leave false with weight_ste 'reactnet' (its scaling is built in)")
        self.weight_mode = weight_mode  # type: ignore[assignment]
        self.weight_ste = weight_ste
        self.scaling = scaling
        if weight_mode == "binary":
            binarize_([self.weight])

    def binary_weight(self) -> torch.Tensor:
        """The weight the forward pass uses."""
        if self.weight_mode != "latent":
            return self.weight
        if self.weight_ste == "reactnet":
            return reactnet_binary_weight(self.weight)
        w = sign_ste(self.weight, self.weight_ste)
        if self.scaling:
            dims = tuple(range(1, self.weight.dim()))
            w = w * self.weight.abs().mean(dim=dims, keepdim=True).detach()
        return w


def reactnet_binary_weight(weight: torch.Tensor) -> torch.Tensor:
    """Forward mean|w| * sign(w) per output channel (scale detached); gradient that of clamp(w, -1, 1)."""
    dims = tuple(range(1, weight.dim()))
    scale = weight.detach().abs().mean(dim=dims, keepdim=True)
    clipped = weight.clamp(-1.0, 1.0)
    # Value scale * sign(w); autograd sees only ``clipped``, so the gradient is not multiplied by the scale.
    return (scale * sign(weight.detach()) - clipped.detach()) + clipped


class BinaryLinear(nn.Linear, BinaryLayer):
    """``nn.Linear`` whose weight is binary: y = x W_b^T (+ bias), W_b = ``binary_weight()``.

    weight_mode: "latent" (a real ``weight``, binarized in the forward pass, for SGD / Adam), "binary"
    (``weight`` holds +-1 itself, for GradientFilter / Bop; it starts as the sign of the default init) or
    "real" (``weight`` used as is). weight_ste: the latent mode's straight-through estimator, "identity"
    (dL/dw = dL/db), "clipped" (zero where |w| > 1) or "reactnet" (the official step-2 layer's, with its
    scaling built in). scaling: multiply sign(w) by mean|w| per output row (latent mode only). bias: off by
    default, as a BatchNorm usually follows.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        weight_mode: WeightMode = "latent",
        weight_ste: str = "identity",
        scaling: bool = False,
    ) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self._init_binary(weight_mode, weight_ste, scaling)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.binary_weight(), self.bias)


class BinaryConv2d(nn.Conv2d, BinaryLayer):
    """``nn.Conv2d`` whose weight is binary: the convolution with W_b = ``binary_weight()``.

    weight_mode, weight_ste, scaling, bias: as for BinaryLinear (scaling per output channel); the other
    arguments are nn.Conv2d's.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
        bias: bool = False,
        weight_mode: WeightMode = "latent",
        weight_ste: str = "identity",
        scaling: bool = False,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=bias)
        self._init_binary(weight_mode, weight_ste, scaling)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.binary_weight(), self.bias)


def binary_layers(model: nn.Module) -> list[tuple[str, BinaryLayer]]:
    """(name, layer) of every binary layer, in module order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, BinaryLayer)]


def split_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(binary weights, every other trainable parameter): each group gets its own optimizer."""
    binary = [layer.weight for _, layer in binary_layers(model)]
    ids = {id(p) for p in binary}
    real = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    return binary, real


@torch.no_grad()
def init_binary_weights(
    weights: Iterable[torch.Tensor], distribution: str, scale: float, generator: torch.Generator | None = None
) -> None:
    """Latent init with an explicit scale: Uniform(-scale, scale) or Normal(0, scale). scale 0 gives zeros."""
    if distribution not in ("uniform", "normal"):
        raise ValueError(f"distribution: expected 'uniform' or 'normal', got {distribution!r}")
    if not scale >= 0:
        raise ValueError(f"scale: expected a float >= 0, got {scale!r}")
    for w in weights:
        noise = torch.empty(w.shape, dtype=torch.float64)
        if distribution == "uniform":
            noise.uniform_(-scale, scale, generator=generator)
        else:
            noise.normal_(0.0, scale, generator=generator)
        w.copy_(noise.to(w.dtype))
