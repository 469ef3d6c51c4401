"""The chapter's residual block and dilated convolution stack.

Residual learning: He et al. 2016, "Deep Residual Learning for Image Recognition"
(https://arxiv.org/abs/1512.03385). Dilated convolutions: Yu & Koltun 2016, "Multi-Scale Context
Aggregation by Dilated Convolutions" (https://arxiv.org/abs/1511.07122).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cnnkit.layers.conv_norm_act import ConvNormAct


class ResidualBlock(nn.Module):
    """y = ReLU(conv2(ReLU(conv1(x))) + skip(x)), as the chapter writes it.

    The skip is the identity when the shape is unchanged and a 1×1 (strided) projection when the
    channels or the resolution change. `norm="batchnorm"` adds a norm after each conv (ResNet's v1).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, *, norm=None):
        super().__init__()
        self.conv1 = ConvNormAct(in_channels, out_channels, 3, stride=stride, norm=norm, act="relu")
        self.conv2 = ConvNormAct(out_channels, out_channels, 3, norm=norm, act=None)
        self.skip = (nn.Identity() if stride == 1 and in_channels == out_channels
                     else nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(self.conv1(x)) + self.skip(x))


class DilatedConvStack(nn.Sequential):
    """3×3 convolutions with growing dilation (1, 2, 4, ...), padding = dilation keeps the size.

    The parameter count equals that of the same stack at dilation 1, while the receptive field
    grows as 1 + 2·Σd instead of 1 + 2·n (Yu & Koltun 2016).
    """

    def __init__(self, in_channels: int, channels: int, dilations=(1, 2, 4), *, norm="batchnorm"):
        super().__init__(*[ConvNormAct(in_channels if i == 0 else channels, channels, 3,
                                       dilation=d, norm=norm, act="relu")
                           for i, d in enumerate(dilations)])
