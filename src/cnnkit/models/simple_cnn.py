"""The chapter's SimpleCNN and its two layer-arrangement schemes.

scheme 1: CONV → ReLU → Dropout → BatchNorm;  scheme 2: CONV → BatchNorm → ReLU → Dropout;
scheme 0: CONV → ReLU → Dropout (the no-BatchNorm baseline of the scheme experiment).
BatchNorm: Ioffe & Szegedy 2015 (https://arxiv.org/abs/1502.03167).
"""
from __future__ import annotations

import torch
from torch import nn

from cnnkit.layers import ConvNormAct
from cnnkit.models._registry import register_model
from cnnkit.utils import CnnkitError

SCHEME_ORDER = {
    0: ("conv", "act", "drop"),
    1: ("conv", "act", "drop", "norm"),
    2: ("conv", "norm", "act", "drop"),
}


class SimpleCNN(nn.Module):
    """conv 32@3×3 (scheme-ordered BN/ReLU/Dropout) → conv 64@3×3 → flatten → fc, no pooling."""

    def __init__(self, input_channels: int = 1, num_classes: int = 10, *, scheme: int = 2,
                 drop_rate: float = 0.5, img_size: int = 28):
        super().__init__()
        if scheme not in SCHEME_ORDER:
            raise CnnkitError(f"unknown scheme {scheme}; choose 0 (no BatchNorm), 1 or 2")
        self.num_classes, self.in_chans, self.scheme = num_classes, input_channels, scheme
        # bias=True as in the chapter's code, even where a BatchNorm follows.
        self.block1 = ConvNormAct(input_channels, 32, 3, padding=1, bias=True,
                                  norm="batchnorm" if scheme else None, act="relu",
                                  drop_rate=drop_rate, order=SCHEME_ORDER[scheme])
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3, stride=1, padding=1)
        self.fc = nn.Linear(64 * img_size * img_size, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.block1(x))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(x, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _build_simple_cnn(scheme: int, num_classes: int, in_chans: int, **kwargs) -> SimpleCNN:
    return SimpleCNN(in_chans, num_classes, scheme=scheme, **kwargs)


_CFG = dict(input_size=(1, 28, 28), fixed_input_size=True)


@register_model(**_CFG)
def simple_cnn(num_classes=10, in_chans=1, scheme=2, **kw):
    return _build_simple_cnn(scheme, num_classes, in_chans, **kw)


@register_model(**_CFG)
def simple_cnn_scheme1(num_classes=10, in_chans=1, **kw):
    return _build_simple_cnn(1, num_classes, in_chans, **kw)


@register_model(**_CFG)
def simple_cnn_scheme2(num_classes=10, in_chans=1, **kw):
    return _build_simple_cnn(2, num_classes, in_chans, **kw)


@register_model(**_CFG)
def simple_cnn_nobn(num_classes=10, in_chans=1, **kw):
    return _build_simple_cnn(0, num_classes, in_chans, **kw)
