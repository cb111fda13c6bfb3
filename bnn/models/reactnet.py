"""ReActNet-A (Liu et al. 2020) as trained by the paper's official code (paper.md section 4).

MobileNetV1 layout: a real stride-2 3x3 stem conv with 32 channels, then 13 binary blocks over the channels
32, 64, 128, 128, 256, 256, 512 x6, 1024 x2, then global pooling and a real classifier. Each block is a binary 3x3
conv (full, not depthwise) and a binary 1x1 conv, each behind an RSign and followed by BatchNorm, a real-valued
shortcut and an RPReLU. Where the width doubles, the 1x1 conv is two convs whose outputs are concatenated, each
with the block's input as shortcut; a stride-2 block average-pools its shortcut.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from bnn.layers import BinaryConv2d
from bnn.models.activations import RPReLU, RSign

STEM_WIDTH = 32
BLOCK_WIDTHS = (64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024)


def block_plan(stem_width: int = STEM_WIDTH, widths: Sequence[int] = BLOCK_WIDTHS) -> list[tuple[int, int, int]]:
    """(in_channels, out_channels, stride) of every block; stride 2 wherever the width grows, except to 64."""
    plan = []
    in_channels = stem_width
    for width in widths:
        stride = 2 if width != in_channels and width != 64 else 1
        plan.append((in_channels, width, stride))
        in_channels = width
    return plan


class ReActBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int, binary: dict, activation_ste: str) -> None:
        super().__init__()
        if out_channels not in (in_channels, 2 * in_channels):
            raise ValueError(f"out_channels: expected {in_channels} or {2 * in_channels}, got {out_channels}")
        self.sign3x3 = RSign(in_channels, activation_ste)
        self.conv3x3 = BinaryConv2d(in_channels, in_channels, 3, stride=stride, padding=1, **binary)
        self.bn3x3 = nn.BatchNorm2d(in_channels)
        self.pool = nn.AvgPool2d(2, 2) if stride == 2 else nn.Identity()
        self.act3x3 = RPReLU(in_channels)
        self.sign1x1 = RSign(in_channels, activation_ste)
        # Two 1x1 convs (not one of 2x width) so that each half can add the block's input as its shortcut.
        halves = 1 if out_channels == in_channels else 2
        self.conv1x1 = nn.ModuleList(BinaryConv2d(in_channels, in_channels, 1, **binary) for _ in range(halves))
        self.bn1x1 = nn.ModuleList(nn.BatchNorm2d(in_channels) for _ in range(halves))
        self.act1x1 = RPReLU(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3x3(self.conv3x3(self.sign3x3(x))) + self.pool(x)
        out = self.act3x3(out)
        binary_in = self.sign1x1(out)
        halves = [bn(conv(binary_in)) + out for conv, bn in zip(self.conv1x1, self.bn1x1)]
        return self.act1x1(torch.cat(halves, dim=1) if len(halves) > 1 else halves[0])


class ReActNetA(nn.Module):
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
        self.stem = nn.Sequential(
            nn.Conv2d(input_shape[0], STEM_WIDTH, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(STEM_WIDTH)
        )
        self.blocks = nn.Sequential(*(ReActBlock(i, o, s, binary, activation_ste) for i, o, s in block_plan()))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(BLOCK_WIDTHS[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.blocks(self.stem(x))).flatten(1))
