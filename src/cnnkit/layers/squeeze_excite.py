"""Squeeze-and-Excitation (Hu et al. 2018, https://arxiv.org/abs/1709.01507) and channel rounding.

Shared by MobileNetV3 (ReLU, hard-sigmoid gate) and EfficientNet (SiLU, sigmoid gate); the child
names `fc1`/`fc2` follow torchvision's `ops.misc.SqueezeExcitation` so checkpoints load unchanged.
"""
from __future__ import annotations

import torch
from torch import nn

from cnnkit.layers.conv_norm_act import get_act


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to the nearest multiple of `divisor`, never dropping below 90 %.

    The rule of the TensorFlow MobileNet reference code, which torchvision's `_make_divisible`
    reproduces; every MobileNet/EfficientNet width depends on it, so it must be bit-exact.
    """
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:  # rounding down must not remove more than 10 % of the channels
        rounded += divisor
    return rounded


class SqueezeExcitation(nn.Module):
    """Global average pool → 1×1 conv `fc1` → act → 1×1 conv `fc2` → gate, multiplied into x.

    `act` is a name or class resolved by `cnnkit.layers.get_act` ('relu', 'silu', ...); `gate` is
    the class that turns the excitation into per-channel scales (nn.Sigmoid, or nn.Hardsigmoid in
    MobileNetV3, where it is cheaper on mobile hardware, Howard et al. 2019 §5.2).
    """

    def __init__(self, in_channels: int, squeeze_channels: int, *, act="relu",
                 gate: type[nn.Module] = nn.Sigmoid):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(in_channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, in_channels, 1)
        self.activation = get_act(act)
        self.scale_activation = gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.avgpool(x)  # (N, C, 1, 1)
        scale = self.fc2(self.activation(self.fc1(scale)))  # (N, C, 1, 1)
        return self.scale_activation(scale) * x
