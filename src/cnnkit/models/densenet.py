"""DenseNet-BC (Huang et al. 2017, "Densely Connected Convolutional Networks",
https://arxiv.org/abs/1608.06993), in torchvision's layout so its checkpoints load strictly.

Each layer of a dense block sees the concatenation of all earlier feature maps of that block and
adds `growth_rate` new channels; transitions halve both the channels (compression 0.5, the "C" of
BC) and the resolution.

Small images: `small_input=True` replaces the 7×7 stride-2 stem and its 3×3 max-pool by a 3×3
stride-1 conv (as the paper's CIFAR networks start, §4), so a 32×32 image reaches the last dense
block at 4×4 instead of 1×1. Only `features.conv0.weight` changes shape (k×k 7 → 3).
`memory_efficient=True` recomputes each layer's concatenation + bottleneck in the backward pass
(Pleiss et al. 2017, https://arxiv.org/abs/1707.06990): same results, far less activation memory.
"""
from __future__ import annotations

from collections import OrderedDict
from contextlib import contextmanager, nullcontext

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from cnnkit.layers.init import init_cnn_
from cnnkit.models._registry import register_model


@contextmanager
def _keep_running_stats(norm: nn.BatchNorm2d):
    """Undo the running-statistics update that recomputing a forward pass makes."""
    saved = [buf.clone() for buf in norm.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buf, old in zip(norm.buffers(), saved):
                buf.copy_(old)


class DenseLayer(nn.Module):
    """BN → ReLU → 1×1 conv (bn_size·k channels) → BN → ReLU → 3×3 conv (k channels).

    Pre-activation order, so these are plain attributes, not ConvNormAct (torchvision names them
    norm1/relu1/conv1/norm2/relu2/conv2). `forward` takes the list of all earlier maps: the
    concatenation happens inside the bottleneck, which is what the memory-efficient mode recomputes.
    """

    def __init__(self, in_channels: int, growth_rate: int, bn_size: int, drop_rate: float,
                 memory_efficient: bool = False):
        super().__init__()
        width = bn_size * growth_rate
        self.norm1 = nn.BatchNorm2d(in_channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=1, bias=False)
        self.norm2 = nn.BatchNorm2d(width)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width, growth_rate, kernel_size=3, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.memory_efficient = memory_efficient

    def bottleneck(self, *features: torch.Tensor) -> torch.Tensor:
        x = torch.cat(features, 1)  # (N, C_in + i·k, H, W)
        return self.conv1(self.relu1(self.norm1(x)))  # (N, bn_size·k, H, W)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        if self.memory_efficient and torch.is_grad_enabled() and any(f.requires_grad
                                                                     for f in features):
            # Recomputing in backward would update norm1's running statistics a second time
            # (torchvision's version does); restoring them keeps both modes identical.
            out = checkpoint(self.bottleneck, *features, use_reentrant=False,
                             context_fn=lambda: (nullcontext(), _keep_running_stats(self.norm1)))
        else:
            out = self.bottleneck(*features)
        out = self.conv2(self.relu2(self.norm2(out)))  # (N, k, H, W)
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        return out


class DenseBlock(nn.ModuleDict):
    """`num_layers` DenseLayers named denselayer1..N; returns all their maps concatenated."""

    def __init__(self, num_layers: int, in_channels: int, bn_size: int, growth_rate: int,
                 drop_rate: float, memory_efficient: bool = False):
        super().__init__()
        for i in range(num_layers):
            self[f"denselayer{i + 1}"] = DenseLayer(in_channels + i * growth_rate, growth_rate,
                                                    bn_size, drop_rate, memory_efficient)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)  # (N, C_in + num_layers·k, H, W)


class Transition(nn.Sequential):
    """BN → ReLU → 1×1 conv (halving the channels) → 2×2 average pool."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(OrderedDict([
            ("norm", nn.BatchNorm2d(in_channels)),
            ("relu", nn.ReLU(inplace=True)),
            ("conv", nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)),
            ("pool", nn.AvgPool2d(kernel_size=2, stride=2)),
        ]))


class DenseNet(nn.Module):
    """DenseNet-BC: stem → (dense block → transition) × 3 → dense block → BN → ReLU → pool → fc.

    `growth_rate` is the paper's k, `block_config` the layers per block, `bn_size` the bottleneck
    width factor (4k channels), `drop_rate` the dropout after each dense layer.
    """

    def __init__(self, growth_rate: int = 32, block_config: tuple[int, ...] = (6, 12, 24, 16),
                 num_init_features: int = 64, *, bn_size: int = 4, drop_rate: float = 0.0,
                 num_classes: int = 1000, in_chans: int = 3, small_input: bool = False,
                 memory_efficient: bool = False):
        super().__init__()
        self.num_classes, self.in_chans = num_classes, in_chans
        if small_input:
            stem = [("conv0", nn.Conv2d(in_chans, num_init_features, 3, padding=1, bias=False)),
                    ("norm0", nn.BatchNorm2d(num_init_features)),
                    ("relu0", nn.ReLU(inplace=True))]
        else:
            stem = [("conv0", nn.Conv2d(in_chans, num_init_features, 7, stride=2, padding=3,
                                        bias=False)),
                    ("norm0", nn.BatchNorm2d(num_init_features)),
                    ("relu0", nn.ReLU(inplace=True)),
                    ("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1))]
        self.features = nn.Sequential(OrderedDict(stem))
        channels = num_init_features
        for i, num_layers in enumerate(block_config):
            self.features.add_module(f"denseblock{i + 1}", DenseBlock(
                num_layers, channels, bn_size, growth_rate, drop_rate, memory_efficient))
            channels += num_layers * growth_rate
            if i != len(block_config) - 1:
                self.features.add_module(f"transition{i + 1}", Transition(channels, channels // 2))
                channels //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(channels))
        self.num_features = channels
        self.classifier = nn.Linear(channels, num_classes)

        # torchvision's "official init from torch repo": kaiming_normal_ (fan_in, ReLU gain) for
        # convs, BN to identity, zero Linear bias; the Linear weight keeps PyTorch's default.
        init_cnn_(self, conv_mode="fan_in", linear=lambda m: nn.init.zeros_(m.bias))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        # norm5 has no activation of its own in the reference layout; the ReLU belongs here
        return F.relu(self.features(x))  # (N, num_features, H/32, W/32); H/8 with small_input

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)  # (N, num_features)
        return self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _build_densenet(growth_rate: int, block_config: tuple[int, ...], num_init_features: int,
                    num_classes: int, in_chans: int, **kwargs) -> DenseNet:
    return DenseNet(growth_rate, block_config, num_init_features, num_classes=num_classes,
                    in_chans=in_chans, **kwargs)


_SMALL = {"test_input_size": (3, 32, 32), "test_kwargs": {"small_input": True}}


@register_model(**_SMALL)
def densenet121(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> DenseNet:
    return _build_densenet(32, (6, 12, 24, 16), 64, num_classes, in_chans, **kwargs)


@register_model(**_SMALL)
def densenet161(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> DenseNet:
    return _build_densenet(48, (6, 12, 36, 24), 96, num_classes, in_chans, **kwargs)


@register_model(**_SMALL)
def densenet169(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> DenseNet:
    return _build_densenet(32, (6, 12, 32, 32), 64, num_classes, in_chans, **kwargs)


@register_model(**_SMALL)
def densenet201(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> DenseNet:
    return _build_densenet(32, (6, 12, 48, 32), 64, num_classes, in_chans, **kwargs)
