"""ResNet-20 with 1-bit weights and activations for CIFAR-10 (He et al. 2016's CIFAR ResNet, binarized).

Every 3x3 conv of the 9 basic blocks is binary (18 binary convs, 16/32/64 channels). As in Bi-Real Net, each binary
conv has its own real-valued shortcut, so the real-valued signal bypasses every sign(); as in IR-Net's ResNet-20,
hardtanh follows each addition and the stride-2 shortcuts are parameter-free (subsample + zero channels, He et
al.'s option A). The stem conv and the classifier stay real-valued.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bnn.layers import BinaryConv2d
from bnn.models.activations import SignActivation

STAGE_WIDTHS = (16, 32, 64)
BLOCKS_PER_STAGE = 3


class DownsampleShortcut(nn.Module):
    """Option-A shortcut: take every other pixel and zero-pad the new channels evenly on both sides."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        extra = out_channels - in_channels
        self.pad = (extra // 2, extra - extra // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, *self.pad))


class BinaryBasicBlock(nn.Module):
    def __init__(
        self, in_channels: int, out_channels: int, stride: int, binary: dict, activation_ste: str
    ) -> None:
        super().__init__()
        self.act1 = SignActivation(activation_ste)
        self.conv1 = BinaryConv2d(in_channels, out_channels, 3, stride=stride, padding=1, **binary)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.act2 = SignActivation(activation_ste)
        self.conv2 = BinaryConv2d(out_channels, out_channels, 3, stride=1, padding=1, **binary)
        self.bn2 = nn.BatchNorm2d(out_channels)
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = DownsampleShortcut(in_channels, out_channels, stride)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.hardtanh(self.bn1(self.conv1(self.act1(x))) + self.shortcut(x))
        return F.hardtanh(self.bn2(self.conv2(self.act2(out))) + out)


class BinaryResNet20(nn.Module):
    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        weight_mode: str = "latent",
        weight_ste: str = "identity",
        activation_ste: str = "bireal",
        scaling: bool = False,
    ) -> None:
        super().__init__()
        binary = dict(weight_mode=weight_mode, weight_ste=weight_ste, scaling=scaling)
        self.conv_in = nn.Conv2d(input_shape[0], STAGE_WIDTHS[0], 3, padding=1, bias=False)
        self.bn_in = nn.BatchNorm2d(STAGE_WIDTHS[0])
        blocks = []
        in_channels = STAGE_WIDTHS[0]
        for stage, width in enumerate(STAGE_WIDTHS):
            for block in range(BLOCKS_PER_STAGE):
                stride = 2 if stage > 0 and block == 0 else 1
                blocks.append(BinaryBasicBlock(in_channels, width, stride, binary, activation_ste))
                in_channels = width
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.bn_out = nn.BatchNorm1d(in_channels)  # IR-Net normalises the pooled features before the classifier
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.hardtanh(self.bn_in(self.conv_in(x)))
        x = self.pool(self.blocks(x)).flatten(1)
        return self.fc(self.bn_out(x))
