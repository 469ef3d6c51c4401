"""Drop-in `nn.Conv2d` / `nn.MaxPool2d` whose forward and backward are cnnkit's own ops.

They subclass the torch modules, so parameters, their names and shapes, the default
initialisation (`nn.Conv2d.reset_parameters`: Kaiming-uniform with a = √5, consuming the random
generator exactly as nn.Conv2d does), the state_dict, `repr` and every `isinstance(m, nn.Conv2d)`
check stay the same; only the arithmetic is replaced by `cnnkit.ops.conv2d` (im2col) and
`cnnkit.ops.max_pool2d`. A model built on them loads torch checkpoints unchanged.
"""
from __future__ import annotations

import torch
from torch import nn

from cnnkit.ops import conv2d, max_pool2d
from cnnkit.utils import CnnkitError


class ScratchConv2d(nn.Conv2d):
    """nn.Conv2d(in, out, kernel_size, stride, padding, dilation, groups, bias) computed by
    `cnnkit.ops.conv2d`; zero padding only (`padding_mode="zeros"`)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, padding_mode: str = "zeros",
                 device=None, dtype=None, *, impl: str = "im2col"):
        if padding_mode != "zeros":
            raise CnnkitError(f"ScratchConv2d supports only padding_mode='zeros', got "
                              f"'{padding_mode}'; use nn.Conv2d for other borders")
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                         dilation=dilation, groups=groups, bias=bias, device=device, dtype=dtype)
        self.impl = impl

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation,
                      self.groups, impl=self.impl)


class ScratchMaxPool2d(nn.MaxPool2d):
    """nn.MaxPool2d(kernel_size, stride=None, padding=0) computed by `cnnkit.ops.max_pool2d`
    (floor mode, no dilation, no indices)."""

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__(kernel_size, stride=stride, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return max_pool2d(x, self.kernel_size, self.stride, self.padding)


__all__ = ["ScratchConv2d", "ScratchMaxPool2d"]
