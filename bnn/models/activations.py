"""Binary activations and ReActNet's learnable shifts (RSign, RPReLU)."""

from __future__ import annotations

import torch
from torch import nn

from bnn.binarize import sign_ste

ACTIVATION_STES = ("bireal", "clipped")


class SignActivation(nn.Module):
    """sign(x) forward; backward by the named estimator ("bireal" piecewise-quadratic or "clipped" identity)."""

    def __init__(self, ste: str = "bireal") -> None:
        super().__init__()
        if ste not in ACTIVATION_STES:
            raise ValueError(f"activation_ste: expected one of {ACTIVATION_STES}, got {ste!r}")
        self.ste = ste

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sign_ste(x, self.ste)

    def extra_repr(self) -> str:
        return f"ste={self.ste!r}"


class LearnableBias(nn.Module):
    """A per-channel shift of an (N, C, H, W) tensor, starting at zero."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias


class RSign(nn.Module):
    """ReActNet's RSign: sign(x + b) with a learnable per-channel threshold b."""

    def __init__(self, channels: int, ste: str = "bireal") -> None:
        super().__init__()
        self.shift = LearnableBias(channels)
        self.sign = SignActivation(ste)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sign(self.shift(x))


class RPReLU(nn.Module):
    """ReActNet's RPReLU: PReLU(x - gamma) + zeta, both shifts learnable per channel."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.shift_in = LearnableBias(channels)
        self.prelu = nn.PReLU(channels)
        self.shift_out = LearnableBias(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shift_out(self.prelu(self.shift_in(x)))
