"""MobileNetV2 (Sandler et al. 2018, "Inverted Residuals and Linear Bottlenecks",
https://arxiv.org/abs/1801.04381) and MobileNetV3 (Howard et al. 2019, "Searching for
MobileNetV3", https://arxiv.org/abs/1905.02244), in torchvision's layout.

Both stack inverted residuals: a 1×1 expansion, a depthwise k×k conv, and a linear 1×1
projection, with a skip when shape allows. V3 adds squeeze-and-excitation with a hard-sigmoid
gate and hard-swish activations in the deeper half. Channel counts are rounded with
`make_divisible` exactly as the TensorFlow reference does.

Small images: `small_input=True` sets stride 1 in the stem conv and in the first stride-2 block
(as CIFAR ports of MobileNetV2 do, e.g. kuangliu/pytorch-cifar), so the network downsamples by 8
instead of 32: a 32×32 image ends on a 4×4 map instead of 1×1. No parameter changes shape, so
ImageNet checkpoints still load.

Dense prediction: MobileNetV3's `dilated=True` (torchvision's keyword, used by its DeepLabV3 and
LR-ASPP backbones) runs the last stage at stride 1 with its depthwise convs dilated ×2, so the
features end at 1/16 of the input instead of 1/32 (the paper's segmentation section applies
atrous convolution to the last block for denser features); again no parameter changes shape.
"""
from __future__ import annotations

from functools import partial

import torch
from torch import nn

from cnnkit.layers import ConvNormAct, SqueezeExcitation, make_divisible
from cnnkit.layers.init import init_cnn_, normal_linear
from cnnkit.models._registry import register_model

_TV_NAMES = ("0", "1", "2")  # torchvision's Conv2dNormActivation children, for checkpoint keys

# MobileNetV3 blocks, Tables 1 and 2 of the paper:
# (in_channels, kernel, expanded_channels, out_channels, use_se, activation, stride)
_V3_LARGE = [
    (16, 3, 16, 16, False, "relu", 1),
    (16, 3, 64, 24, False, "relu", 2),
    (24, 3, 72, 24, False, "relu", 1),
    (24, 5, 72, 40, True, "relu", 2),
    (40, 5, 120, 40, True, "relu", 1),
    (40, 5, 120, 40, True, "relu", 1),
    (40, 3, 240, 80, False, "hardswish", 2),
    (80, 3, 200, 80, False, "hardswish", 1),
    (80, 3, 184, 80, False, "hardswish", 1),
    (80, 3, 184, 80, False, "hardswish", 1),
    (80, 3, 480, 112, True, "hardswish", 1),
    (112, 3, 672, 112, True, "hardswish", 1),
    (112, 5, 672, 160, True, "hardswish", 2),
    (160, 5, 960, 160, True, "hardswish", 1),
    (160, 5, 960, 160, True, "hardswish", 1),
]
_V3_SMALL = [
    (16, 3, 16, 16, True, "relu", 2),
    (16, 3, 72, 24, False, "relu", 2),
    (24, 3, 88, 24, False, "relu", 1),
    (24, 5, 96, 40, True, "hardswish", 2),
    (40, 5, 240, 40, True, "hardswish", 1),
    (40, 5, 240, 40, True, "hardswish", 1),
    (40, 5, 120, 48, True, "hardswish", 1),
    (48, 5, 144, 48, True, "hardswish", 1),
    (48, 5, 288, 96, True, "hardswish", 2),
    (96, 5, 576, 96, True, "hardswish", 1),
    (96, 5, 576, 96, True, "hardswish", 1),
]
# MobileNetV2 stages, Table 2 of its paper: (expansion t, out_channels c, repeats n, stride s)
_V2_STAGES = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
              (6, 160, 3, 2), (6, 320, 1, 1)]


def _small_input_strides(strides: list[int], small_input: bool) -> tuple[int, list[int]]:
    """Stem stride and block strides; `small_input` turns the stem and the first stride-2 block
    to stride 1 (32 → 8 overall downsampling)."""
    if not small_input:
        return 2, list(strides)
    first = strides.index(2)
    return 1, [1 if i == first else s for i, s in enumerate(strides)]


def _init_weights(model: nn.Module) -> None:
    # torchvision's MobileNet init: kaiming_normal fan_out convs, BN identity, N(0, 0.01) Linear
    init_cnn_(model, linear=normal_linear(0.01))


# --- blocks ---

class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1×1 expand (ReLU6) → depthwise 3×3 (ReLU6) → 1×1 linear projection.

    The projection has no activation: a ReLU in the narrow bottleneck destroys information
    (the "linear bottleneck" of the paper, §3.2). Children live in `conv`, as in torchvision.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = int(round(in_channels * expand_ratio))
        self.use_res_connect = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvNormAct(in_channels, hidden, 1, act="relu6", names=_TV_NAMES))
        layers += [
            ConvNormAct(hidden, hidden, 3, stride=stride, groups=hidden, act="relu6",
                        names=_TV_NAMES),
            nn.Conv2d(hidden, out_channels, 1, bias=False),  # flat in torchvision's layout
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class InvertedResidualV3(nn.Module):
    """MobileNetV3 block: [1×1 expand] → depthwise k×k → [SE] → 1×1 linear projection."""

    def __init__(self, in_channels: int, kernel: int, expanded: int, out_channels: int,
                 use_se: bool, act: str, stride: int, norm, dilation: int = 1):
        super().__init__()
        # the configured stride decides the skip and marks a new stage (torchvision's `_is_cn`,
        # which its segmentation builders read), even where dilation replaces it
        self.use_res_connect = stride == 1 and in_channels == out_channels
        self.stage_start = stride > 1
        layers: list[nn.Module] = []
        if expanded != in_channels:
            layers.append(ConvNormAct(in_channels, expanded, 1, norm=norm, act=act,
                                      names=_TV_NAMES))
        layers.append(ConvNormAct(expanded, expanded, kernel, stride=1 if dilation > 1 else stride,
                                  dilation=dilation, groups=expanded, norm=norm, act=act,
                                  names=_TV_NAMES))
        if use_se:  # squeeze to a quarter of the expanded width (paper §5.3), hard-sigmoid gate
            layers.append(SqueezeExcitation(expanded, make_divisible(expanded // 4, 8),
                                            act="relu", gate=nn.Hardsigmoid))
        layers.append(ConvNormAct(expanded, out_channels, 1, norm=norm, act=None,
                                  names=_TV_NAMES))
        self.block = nn.Sequential(*layers)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return out + x if self.use_res_connect else out


# --- models ---

class MobileNetV2(nn.Module):
    """Stem 3×3 conv (32 ch) → 17 inverted residuals → 1×1 conv (1280 ch) → pool → dropout → fc."""

    def __init__(self, *, num_classes: int = 1000, in_chans: int = 3, width_mult: float = 1.0,
                 dropout: float = 0.2, small_input: bool = False):
        super().__init__()
        self.num_classes, self.in_chans = num_classes, in_chans
        channels = make_divisible(32 * width_mult, 8)
        self.last_channel = make_divisible(1280 * max(1.0, width_mult), 8)
        blocks = [(t, make_divisible(c * width_mult, 8), s if i == 0 else 1)
                  for t, c, n, s in _V2_STAGES for i in range(n)]
        stem_stride, strides = _small_input_strides([s for _, _, s in blocks], small_input)
        features: list[nn.Module] = [ConvNormAct(in_chans, channels, 3, stride=stem_stride,
                                                 act="relu6", names=_TV_NAMES)]
        for (t, out_channels, _), stride in zip(blocks, strides):
            features.append(InvertedResidual(channels, out_channels, stride, t))
            channels = out_channels
        features.append(ConvNormAct(channels, self.last_channel, 1, act="relu6", names=_TV_NAMES))
        self.features = nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.last_channel,
                                                                       num_classes))
        _init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # (N, 1280, H/32, W/32); H/8 with small_input

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(x), 1))  # (N, 1280) → (N, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class MobileNetV3(nn.Module):
    """Stem 3×3 conv (hard-swish) → inverted residuals → 1×1 conv (6× last width) → pool →
    fc → hard-swish → dropout → fc. BatchNorm uses eps 1e-3 and momentum 0.01, as torchvision
    does; with that momentum the running statistics take a few hundred steps to settle, so a
    model evaluated after a very short training run can look untrained (measured on MNIST:
    11 % after 150 steps, 92.5 % once the statistics are recomputed).

    `blocks` rows: (in, kernel, expanded, out, use_se, activation, stride), widths already final.
    `dilated=True`: the last stage, from its stride-2 block on, is dilated ×2 instead of strided.
    """

    def __init__(self, blocks: list[tuple], last_channel: int, *, num_classes: int = 1000,
                 in_chans: int = 3, dropout: float = 0.2, small_input: bool = False,
                 dilated: bool = False):
        super().__init__()
        self.num_classes, self.in_chans = num_classes, in_chans
        norm = partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)
        stem_stride, strides = _small_input_strides([b[6] for b in blocks], small_input)
        last_stage = max(i for i, s in enumerate(strides) if s > 1)
        dilations = [2 if dilated and i >= last_stage else 1 for i in range(len(blocks))]
        features: list[nn.Module] = [ConvNormAct(in_chans, blocks[0][0], 3, stride=stem_stride,
                                                 norm=norm, act="hardswish", names=_TV_NAMES)]
        for (cin, kernel, expanded, cout, use_se, act, _), stride, dilation in zip(
                blocks, strides, dilations):
            features.append(InvertedResidualV3(cin, kernel, expanded, cout, use_se, act, stride,
                                               norm, dilation))
        last_conv = 6 * blocks[-1][3]
        features.append(ConvNormAct(blocks[-1][3], last_conv, 1, norm=norm, act="hardswish",
                                    names=_TV_NAMES))
        self.features = nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(last_conv, last_channel),
            nn.Hardswish(inplace=True),
            nn.Dropout(p=dropout, inplace=True),
            nn.Linear(last_channel, num_classes),
        )
        _init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # (N, 6·last width, H/32, W/32); H/8 small_input, H/16 dilated

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(x), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _build_mobilenet_v3(table: list[tuple], last_channel: int, num_classes: int, in_chans: int,
                        *, width_mult: float = 1.0, **kwargs) -> MobileNetV3:
    """Scale the widths of a block table by `width_mult`, rounded to multiples of 8."""
    def scale(c):
        return make_divisible(c * width_mult, 8)
    blocks = [(scale(cin), k, scale(exp), scale(cout), se, act, s)
              for cin, k, exp, cout, se, act, s in table]
    return MobileNetV3(blocks, scale(last_channel), num_classes=num_classes, in_chans=in_chans,
                       **kwargs)


_SMALL = {"test_input_size": (3, 32, 32), "test_kwargs": {"small_input": True}}


@register_model(**_SMALL)
def mobilenet_v2(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> MobileNetV2:
    return MobileNetV2(num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(**_SMALL)
def mobilenet_v3_large(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> MobileNetV3:
    return _build_mobilenet_v3(_V3_LARGE, 1280, num_classes, in_chans, **kwargs)


@register_model(**_SMALL)
def mobilenet_v3_small(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> MobileNetV3:
    return _build_mobilenet_v3(_V3_SMALL, 1024, num_classes, in_chans, **kwargs)
