"""A small classifier on the chapter's dilated convolution stack, to show what dilation buys.

`plain_cnn` (dilations 1, 1, 1, 1) and `dilated_cnn` (1, 2, 4, 8) have the same layers and the same
parameter count; only the spacing of the 3×3 taps differs. The last conv's receptive field is
1 + 2·Σd pixels: 9 for the plain stack, 31 for the dilated one, which then sees a whole 28×28
digit (Yu & Koltun 2016, "Multi-Scale Context Aggregation by Dilated Convolutions",
https://arxiv.org/abs/1511.07122). Doubling from 1 leaves no holes in that field; dilations with a
common factor (2, 2, 2, 2) do — "gridding" (Wang et al. 2018, "Understanding Convolution for
Semantic Segmentation", https://arxiv.org/abs/1702.08502).
"""
from __future__ import annotations

import torch
from torch import nn

from cnnkit.layers.residual import DilatedConvStack
from cnnkit.models._registry import register_model


class DilatedCNN(nn.Module):
    """DilatedConvStack (3×3 ConvNormAct per dilation, size-preserving) → global average pool →
    (dropout) → fc.

    No striding or pooling inside the stack, so every layer works at full resolution and the
    receptive field grows only through the dilations.
    """

    def __init__(self, in_chans: int = 1, num_classes: int = 10, *, channels: int = 32,
                 dilations: tuple[int, ...] = (1, 1, 1, 1), norm="batchnorm",
                 drop_rate: float = 0.0):
        super().__init__()
        self.num_classes, self.in_chans = num_classes, in_chans
        self.dilations = tuple(dilations)
        self.features = DilatedConvStack(in_chans, channels, self.dilations, norm=norm)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(channels, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # (N, channels, H, W): same H, W as the input

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.global_pool(x), 1)  # (N, channels)
        return self.fc(self.drop(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _build_dilated_cnn(dilations: tuple[int, ...], num_classes: int, in_chans: int,
                       **kwargs) -> DilatedCNN:
    return DilatedCNN(in_chans, num_classes, dilations=dilations, **kwargs)


_CFG = dict(input_size=(1, 28, 28))


@register_model(**_CFG)
def plain_cnn(num_classes=10, in_chans=1, **kw):
    return _build_dilated_cnn((1, 1, 1, 1), num_classes, in_chans, **kw)


@register_model(**_CFG)
def dilated_cnn(num_classes=10, in_chans=1, **kw):
    return _build_dilated_cnn((1, 2, 4, 8), num_classes, in_chans, **kw)
