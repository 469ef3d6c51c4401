"""EfficientNet B0–B7 (Tan & Le 2019, "EfficientNet: Rethinking Model Scaling for Convolutional
Neural Networks", https://arxiv.org/abs/1905.11946), in torchvision's layout.

B0 is a stack of MBConv blocks (inverted residuals with squeeze-and-excitation and SiLU);
B1–B7 scale its widths by `width_mult` (rounded to multiples of 8) and its per-stage depths by
`depth_mult` (rounded up), with a larger classifier dropout. Residual branches use stochastic
depth whose drop probability grows linearly from 0 to `stochastic_depth_prob` over the blocks.

BatchNorm: B0–B4 use PyTorch's defaults (eps 1e-5, momentum 0.1), B5–B7 use eps 1e-3 and
momentum 0.01 — torchvision's B5–B7 weights are ported (via lukemelas/EfficientNet-PyTorch)
from the TensorFlow models, whose BN runs with those settings. Both choices are torchvision's;
momentum 0.01 makes the running statistics slow to settle, so evaluate B5–B7 only after a few
hundred training steps.

Small images: `small_input=True` sets stride 1 in the stem conv and in the first stride-2 stage,
so the network downsamples by 8 instead of 32: a 32×32 image ends on a 4×4 map instead of 1×1.
No parameter changes shape, so ImageNet checkpoints still load.
"""
from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn

from cnnkit.layers import ConvNormAct, DropPath, SqueezeExcitation, make_divisible
from cnnkit.layers.init import init_cnn_
from cnnkit.models._registry import register_model

_TV_NAMES = ("0", "1", "2")  # torchvision's Conv2dNormActivation children, for checkpoint keys

# EfficientNet-B0 stages, Table 1 of the paper:
# (expand_ratio, kernel, stride, in_channels, out_channels, num_layers)
_B0_STAGES = [
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
]
_TF_BATCHNORM = partial(nn.BatchNorm2d, eps=1e-3, momentum=0.01)  # TF's BN, decay 0.99


class MBConv(nn.Module):
    """[1×1 expand] → depthwise k×k → SE (squeeze to in_channels/4) → 1×1 linear projection,
    all with SiLU; the residual branch goes through stochastic depth ("row" mode: whole samples).
    """

    def __init__(self, in_channels: int, out_channels: int, *, expand_ratio: float, kernel: int,
                 stride: int, drop_path: float, norm):
        super().__init__()
        self.use_res_connect = stride == 1 and in_channels == out_channels
        expanded = make_divisible(in_channels * expand_ratio, 8)
        layers: list[nn.Module] = []
        if expanded != in_channels:
            layers.append(ConvNormAct(in_channels, expanded, 1, norm=norm, act="silu",
                                      names=_TV_NAMES))
        layers += [
            ConvNormAct(expanded, expanded, kernel, stride=stride, groups=expanded, norm=norm,
                        act="silu", names=_TV_NAMES),
            SqueezeExcitation(expanded, max(1, in_channels // 4), act="silu"),
            ConvNormAct(expanded, out_channels, 1, norm=norm, act=None, names=_TV_NAMES),
        ]
        self.block = nn.Sequential(*layers)
        self.stochastic_depth = DropPath(drop_path)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return self.stochastic_depth(out) + x if self.use_res_connect else out


def _init_dense(m: nn.Linear) -> None:
    bound = 1.0 / math.sqrt(m.out_features)
    nn.init.uniform_(m.weight, -bound, bound)
    nn.init.zeros_(m.bias)


class EfficientNet(nn.Module):
    """Stem 3×3 conv → 7 stages of MBConv → 1×1 conv (4× last width) → pool → dropout → fc.

    `stages` rows: (expand_ratio, kernel, stride, in, out, num_layers), widths and depths final.
    """

    def __init__(self, stages: list[tuple], *, dropout: float, stochastic_depth_prob: float = 0.2,
                 norm=nn.BatchNorm2d, num_classes: int = 1000, in_chans: int = 3,
                 small_input: bool = False):
        super().__init__()
        self.num_classes, self.in_chans = num_classes, in_chans
        stem_stride = 2
        if small_input:  # stride 1 in the stem and in the first stride-2 stage
            stem_stride, first = 1, [s[2] for s in stages].index(2)
            stages = [s[:2] + (1,) + s[3:] if i == first else s for i, s in enumerate(stages)]
        layers: list[nn.Module] = [ConvNormAct(in_chans, stages[0][3], 3, stride=stem_stride,
                                               norm=norm, act="silu", names=_TV_NAMES)]
        total_blocks = sum(s[5] for s in stages)
        block_id = 0
        for expand_ratio, kernel, stride, cin, cout, num_layers in stages:
            blocks = []
            for i in range(num_layers):
                blocks.append(MBConv(
                    cin if i == 0 else cout, cout, expand_ratio=expand_ratio, kernel=kernel,
                    stride=stride if i == 0 else 1, norm=norm,
                    # the drop probability grows linearly with depth (Huang et al. 2016, §3)
                    drop_path=stochastic_depth_prob * block_id / total_blocks))
                block_id += 1
            layers.append(nn.Sequential(*blocks))
        last_in = stages[-1][4]
        self.num_features = 4 * last_in
        layers.append(ConvNormAct(last_in, self.num_features, 1, norm=norm, act="silu",
                                  names=_TV_NAMES))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout, inplace=True),
                                        nn.Linear(self.num_features, num_classes))

        # torchvision's EfficientNet init: kaiming_normal fan_out convs (zero bias), BN identity,
        # Linear uniform in ±1/sqrt(out_features) (the TF reference's dense initializer)
        init_cnn_(self, linear=_init_dense)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # (N, num_features, H/32, W/32); H/8 with small_input

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(x), 1))  # (N, num_features) → (N, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _build_efficientnet(width_mult: float, depth_mult: float, dropout: float, num_classes: int,
                        in_chans: int, **kwargs) -> EfficientNet:
    """Scale B0's widths (multiples of 8) and depths (rounded up) — compound scaling, §3.3."""
    stages = [(e, k, s, make_divisible(cin * width_mult, 8), make_divisible(cout * width_mult, 8),
               int(math.ceil(n * depth_mult))) for e, k, s, cin, cout, n in _B0_STAGES]
    kwargs.setdefault("dropout", dropout)
    return EfficientNet(stages, num_classes=num_classes, in_chans=in_chans, **kwargs)


_SMALL = {"test_input_size": (3, 32, 32), "test_kwargs": {"small_input": True}}


@register_model(**_SMALL)
def efficientnet_b0(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> EfficientNet:
    return _build_efficientnet(1.0, 1.0, 0.2, num_classes, in_chans, **kwargs)


@register_model(**_SMALL)
def efficientnet_b1(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> EfficientNet:
    return _build_efficientnet(1.0, 1.1, 0.2, num_classes, in_chans, **kwargs)


@register_model(**_SMALL)
def efficientnet_b2(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> EfficientNet:
    return _build_efficientnet(1.1, 1.2, 0.3, num_classes, in_chans, **kwargs)


@register_model(**_SMALL)
def efficientnet_b3(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> EfficientNet:
    return _build_efficientnet(1.2, 1.4, 0.3, num_classes, in_chans, **kwargs)


@register_model(**_SMALL)
def efficientnet_b4(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> EfficientNet:
    return _build_efficientnet(1.4, 1.8, 0.4, num_classes, in_chans, **kwargs)


@register_model(**_SMALL)
def efficientnet_b5(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> EfficientNet:
    return _build_efficientnet(1.6, 2.2, 0.4, num_classes, in_chans, norm=_TF_BATCHNORM, **kwargs)


@register_model(**_SMALL)
def efficientnet_b6(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> EfficientNet:
    return _build_efficientnet(1.8, 2.6, 0.5, num_classes, in_chans, norm=_TF_BATCHNORM, **kwargs)


@register_model(**_SMALL)
def efficientnet_b7(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> EfficientNet:
    return _build_efficientnet(2.0, 3.1, 0.5, num_classes, in_chans, norm=_TF_BATCHNORM, **kwargs)
