"""ResNet, ResNeXt and Wide ResNet in torchvision's layout (conv1, bn1, layer1..4, fc).

- ResNet: He et al. 2015, "Deep Residual Learning for Image Recognition",
  https://arxiv.org/abs/1512.03385. The bottleneck puts its stride on the 3×3 conv ("ResNet v1.5",
  as torchvision and NVIDIA's DeepLearningExamples do), not on the first 1×1 conv as the paper
  does: about +0.5 % top-1, since the 1×1 conv no longer skips three quarters of its input.
- ResNeXt: Xie et al. 2016, "Aggregated Residual Transformations", https://arxiv.org/abs/1611.05431
  (`groups` × `width_per_group` channels in the grouped 3×3 conv).
- Wide ResNet: Zagoruyko & Komodakis 2016, "Wide Residual Networks",
  https://arxiv.org/abs/1605.07146 (bottleneck inner width doubled, outer 1×1 widths kept).

Small images: `small_input=True` replaces the 7×7 stride-2 stem and its max-pool with a 3×3 stride-1
conv, as the paper's CIFAR networks do (§4.2), so a 32×32 image reaches layer4 as a 4×4 map
(28×28 → 4×4 too) instead of 1×1. It changes only `conv1.weight`'s kernel (3×3 instead of 7×7).
`zero_init_residual=True` zeroes the last BN of every residual branch (Goyal et al. 2017,
https://arxiv.org/abs/1706.02677), so that each block starts as the identity.

Dense prediction: `replace_stride_with_dilation=(False, True, True)` (torchvision's keyword) trades
the stride of layer3 and layer4 for dilation, the atrous convolution of DeepLab (Chen et al. 2017,
https://arxiv.org/abs/1706.05587 §3.1): layer4 then ends at 1/8 of the input instead of 1/32 with
the same receptive field growth and exactly the same parameters, so classification weights load.
"""
from __future__ import annotations

import torch
from torch import nn

from cnnkit.layers import ConvNormAct
from cnnkit.layers.init import init_cnn_
from cnnkit.models._registry import register_model
from cnnkit.utils import CnnkitError


class BasicBlock(nn.Module):
    """3×3 conv → BN → ReLU → 3×3 conv → BN, plus the shortcut, then ReLU (ResNet-18/34)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, groups: int = 1, base_width: int = 64,
                 dilation: int = 1):
        super().__init__()
        if groups != 1 or base_width != 64:
            raise CnnkitError("ResNet-18/34 (BasicBlock) support only groups=1 and "
                              "width_per_group=64: use a Bottleneck model such as resnext50_32x4d")
        if dilation > 1:  # as in torchvision: DeepLab/FCN use Bottleneck backbones only
            raise CnnkitError("ResNet-18/34 (BasicBlock) do not support dilation: use a Bottleneck "
                              "model such as resnet50 with replace_stride_with_dilation")
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + shortcut)


class Bottleneck(nn.Module):
    """1×1 reduce → 3×3 (strided, optionally grouped) → 1×1 expand ×4, plus the shortcut."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, groups: int = 1, base_width: int = 64,
                 dilation: int = 1):
        super().__init__()
        # ResNeXt / Wide ResNet widen only the inner convs: 64 → 128 for 32×4d and for wide ×2
        width = int(planes * (base_width / 64.0)) * groups
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=dilation, dilation=dilation,
                               groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + shortcut)


def make_stage(block: type[nn.Module], in_planes: int, planes: int, depth: int, stride: int,
               groups: int, base_width: int, *, dilation: int = 1,
               first_dilation: int = 1) -> nn.Sequential:
    """`depth` blocks; the first one strides and, when the shape changes, projects the shortcut
    with a 1×1 conv + BN (option B of the paper), named `downsample.0/1` as in torchvision.

    A dilated stage runs its first block at the previous stage's `first_dilation` and the others
    at `dilation`, as torchvision's `_make_layer` does (so its checkpoints behave the same).
    """
    out_planes = planes * block.expansion
    downsample = None
    if stride != 1 or in_planes != out_planes:
        downsample = ConvNormAct(in_planes, out_planes, 1, stride=stride, act=None,
                                 names=("0", "1", "2"))
    blocks = [block(in_planes, planes, stride, downsample, groups, base_width, first_dilation)]
    blocks += [block(out_planes, planes, 1, None, groups, base_width, dilation)
               for _ in range(depth - 1)]
    return nn.Sequential(*blocks)


class ResNet(nn.Module):
    """Stem → four stages of residual blocks (64, 128, 256, 512 planes) → global pool → fc."""

    def __init__(self, block: type[nn.Module], depths: tuple[int, int, int, int], *,
                 num_classes: int = 1000, in_chans: int = 3, groups: int = 1,
                 width_per_group: int = 64, small_input: bool = False,
                 zero_init_residual: bool = False,
                 replace_stride_with_dilation: tuple[bool, bool, bool] = (False, False, False)):
        super().__init__()
        if len(replace_stride_with_dilation) != 3:
            raise CnnkitError("replace_stride_with_dilation takes 3 flags (layer2, layer3, "
                              f"layer4), got {replace_stride_with_dilation!r}")
        self.num_classes, self.in_chans = num_classes, in_chans
        if small_input:  # CIFAR stem: keep the full resolution for 28×28 / 32×32 images
            self.conv1 = nn.Conv2d(in_chans, 64, 3, stride=1, padding=1, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_chans, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity() if small_input else nn.MaxPool2d(3, stride=2, padding=1)
        in_planes, dilation = 64, 1
        for i, (planes, depth) in enumerate(zip((64, 128, 256, 512), depths)):
            stride, first_dilation = (1 if i == 0 else 2), dilation
            if i > 0 and replace_stride_with_dilation[i - 1]:
                dilation, stride = dilation * stride, 1  # keep the resolution, widen the 3×3s
            stage = make_stage(block, in_planes, planes, depth, stride, groups, width_per_group,
                               dilation=dilation, first_dilation=first_dilation)
            self.add_module(f"layer{i + 1}", stage)
            in_planes = planes * block.expansion
        self.num_features = in_planes
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        # torchvision's scheme: He-normal with fan_out for convs (He et al. 2015,
        # https://arxiv.org/abs/1502.01852), BN at identity; fc keeps PyTorch's default init.
        init_cnn_(self)
        if zero_init_residual:  # every block then starts as the identity: +0.2-0.3 % (Goyal et al.)
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    m.zero_init_last()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (N, 64, H/4, W/4); H, W if small
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)  # (N, 512·expansion, H/32, W/32); H/8, W/8 if small or dilated

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(x), 1))  # (N, C, 1, 1) → (N, C) → (N, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _build_resnet(block: type[nn.Module], depths: tuple[int, int, int, int], num_classes: int,
                  in_chans: int, **kwargs) -> ResNet:
    return ResNet(block, depths, num_classes=num_classes, in_chans=in_chans, **kwargs)


# --- registered variants (torchvision's depths and widths) ---
_SMALL = {"test_input_size": (3, 32, 32), "test_kwargs": {"small_input": True}}


@register_model(**_SMALL)
def resnet18(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> ResNet:
    return _build_resnet(BasicBlock, (2, 2, 2, 2), num_classes, in_chans, **kwargs)


@register_model(**_SMALL)
def resnet34(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> ResNet:
    return _build_resnet(BasicBlock, (3, 4, 6, 3), num_classes, in_chans, **kwargs)


@register_model(**_SMALL)
def resnet50(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> ResNet:
    return _build_resnet(Bottleneck, (3, 4, 6, 3), num_classes, in_chans, **kwargs)


@register_model(**_SMALL)
def resnet101(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> ResNet:
    return _build_resnet(Bottleneck, (3, 4, 23, 3), num_classes, in_chans, **kwargs)


@register_model(**_SMALL)
def resnet152(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> ResNet:
    return _build_resnet(Bottleneck, (3, 8, 36, 3), num_classes, in_chans, **kwargs)


@register_model(**_SMALL)
def resnext50_32x4d(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> ResNet:
    return _build_resnet(Bottleneck, (3, 4, 6, 3), num_classes, in_chans, groups=32,
                         width_per_group=4, **kwargs)


@register_model(**_SMALL)
def wide_resnet50_2(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> ResNet:
    return _build_resnet(Bottleneck, (3, 4, 6, 3), num_classes, in_chans, width_per_group=128,
                         **kwargs)
