"""VGG 11/13/16/19, with and without BatchNorm, in torchvision's layout (features.N, classifier.N).

Simonyan & Zisserman 2014, "Very Deep Convolutional Networks for Large-Scale Image Recognition",
https://arxiv.org/abs/1409.1556: stacks of 3×3 convs (configurations A, B, D, E of Table 1) with a
2×2 max-pool after each stack, then three fully connected layers. The `_bn` variants put a
BatchNorm after every conv (Ioffe & Szegedy 2015), as torchvision does; their convs keep a bias.

Small images: `small_input=True` drops the fifth max-pool (a 28×28 image would shrink to 0×0 after
five halvings) and replaces the 7×7 pool + 25088→4096→4096 classifier by a global average pool and
a 512→512→512 classifier: 32×32 and 28×28 images reach the pool as 2×2 and 1×1 maps, and the
head shrinks from ~124 M to ~1 M parameters (1000 classes). The conv weights keep their names and
shapes, so `features` transfers between both forms.
"""
from __future__ import annotations

import torch
from torch import nn

from cnnkit.layers import ConvNormAct
from cnnkit.layers.init import init_cnn_, normal_linear
from cnnkit.models._registry import register_model

# Table 1 of the paper: output channels of each 3×3 conv, "M" for a 2×2 max-pool
_CFGS: dict[str, tuple[int | str, ...]] = {
    "A": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "B": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "D": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    "E": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
          512, 512, 512, 512, "M"),
}


def make_features(cfg: tuple[int | str, ...], in_chans: int, batch_norm: bool) -> nn.Sequential:
    """The conv stacks as one flat Sequential: conv, (BN,) ReLU, ..., max-pool."""
    layers: list[nn.Module] = []
    channels = in_chans
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        # The shared block, unrolled: torchvision's keys are flat (features.0 conv, features.1 BN,
        # features.2 ReLU, ...), and its convs keep their bias even before a BN.
        block = ConvNormAct(channels, v, 3, padding=1, bias=True,
                            norm="batchnorm" if batch_norm else None)
        layers.extend(block.children())
        channels = v
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """features → adaptive average pool (7×7, or 1×1 if small) → Linear-ReLU-Dropout ×2 → Linear."""

    def __init__(self, cfg: tuple[int | str, ...], *, batch_norm: bool = False,
                 num_classes: int = 1000, in_chans: int = 3, dropout: float = 0.5,
                 small_input: bool = False):
        super().__init__()
        self.num_classes, self.in_chans = num_classes, in_chans
        if small_input:
            cfg = cfg[:-1]  # the fifth max-pool; the last entry of every configuration
        self.features = make_features(cfg, in_chans, batch_norm)
        pool, hidden = (1, 512) if small_input else (7, 4096)
        self.num_features = 512
        self.avgpool = nn.AdaptiveAvgPool2d(pool)
        self.classifier = nn.Sequential(
            nn.Linear(512 * pool * pool, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's scheme: He-normal (fan_out) convs with zero bias, BN at identity,
        # N(0, 0.01²) fully connected layers with zero bias.
        init_cnn_(self, linear=normal_linear(0.01))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # (N, 512, H/32, W/32); H/16, W/16 if small

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(x), 1)  # (N, 512·7·7), or (N, 512) if small
        return self.classifier(x)  # the dropout layers sit inside the classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _build_vgg(cfg: str, batch_norm: bool, num_classes: int, in_chans: int, **kwargs) -> VGG:
    return VGG(_CFGS[cfg], batch_norm=batch_norm, num_classes=num_classes, in_chans=in_chans,
               **kwargs)


# --- registered variants: configurations A (11 layers), B (13), D (16), E (19) ---
_SMALL = {"test_input_size": (3, 32, 32), "test_kwargs": {"small_input": True}}


@register_model(**_SMALL)
def vgg11(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> VGG:
    return _build_vgg("A", False, num_classes, in_chans, **kwargs)


@register_model(**_SMALL)
def vgg13(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> VGG:
    return _build_vgg("B", False, num_classes, in_chans, **kwargs)


@register_model(**_SMALL)
def vgg16(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> VGG:
    return _build_vgg("D", False, num_classes, in_chans, **kwargs)


@register_model(**_SMALL)
def vgg19(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> VGG:
    return _build_vgg("E", False, num_classes, in_chans, **kwargs)


@register_model(**_SMALL)
def vgg11_bn(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> VGG:
    return _build_vgg("A", True, num_classes, in_chans, **kwargs)


@register_model(**_SMALL)
def vgg13_bn(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> VGG:
    return _build_vgg("B", True, num_classes, in_chans, **kwargs)


@register_model(**_SMALL)
def vgg16_bn(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> VGG:
    return _build_vgg("D", True, num_classes, in_chans, **kwargs)


@register_model(**_SMALL)
def vgg19_bn(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> VGG:
    return _build_vgg("E", True, num_classes, in_chans, **kwargs)
