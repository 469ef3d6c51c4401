"""The weight initialisation torchvision's CNNs share, in one place.

He-normal convolutions (He et al. 2015, https://arxiv.org/abs/1502.01852) with zero bias, norms at
the identity; each family passes what it does to its Linear layers.
"""
from __future__ import annotations

from typing import Callable

from torch import nn


def init_cnn_(model: nn.Module, *, conv_mode: str = "fan_out",
              linear: Callable[[nn.Linear], None] | None = None) -> None:
    """Initialise every Conv2d, BatchNorm2d/GroupNorm and (with `linear`) Linear of `model`.

    One pass in module order, so the random draws happen in the same order as torchvision's.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode=conv_mode, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and linear is not None:
            linear(m)


def normal_linear(std: float) -> Callable[[nn.Linear], None]:
    """N(0, std²) weights, zero bias (VGG, MobileNet: std 0.01)."""
    def init(m: nn.Linear) -> None:
        nn.init.normal_(m.weight, 0.0, std)
        nn.init.zeros_(m.bias)
    return init
