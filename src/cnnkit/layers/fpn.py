"""Feature Pyramid Network (Lin et al. 2017, https://arxiv.org/abs/1612.03144), with
torchvision's names (`ops/feature_pyramid_network.py`), so detector checkpoints load strictly.

Each backbone level C_i gets a 1×1 lateral conv (`inner_blocks`) to a common width; going from the
coarsest level down, the running top-down map is upsampled ×2 (nearest) and added to the next
lateral; a 3×3 conv (`layer_blocks`) then smooths each sum into P_i. Extra blocks append coarser
levels: `LastLevelMaxPool` (Faster/Mask R-CNN's P6 by subsampling P5) or `LastLevelP6P7`
(RetinaNet's strided convs, Lin et al. 2017, https://arxiv.org/abs/1708.02002).
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from cnnkit.layers.conv_norm_act import ConvNormAct
from cnnkit.utils import CnnkitError

__all__ = ["ExtraFPNBlock", "FeaturePyramidNetwork", "LastLevelMaxPool", "LastLevelP6P7"]

_TV_NAMES = ("0", "1", "2")  # torchvision's Conv2dNormActivation children: checkpoint keys


class ExtraFPNBlock(nn.Module):
    """Base of the blocks that add levels after the pyramid.

    forward(results, x, names): `results` are the FPN outputs (finest first), `x` the backbone
    maps they came from, `names` their keys; returns the extended (results, names).
    """

    def forward(self, results: list[torch.Tensor], x: list[torch.Tensor],
                names: list[str]) -> tuple[list[torch.Tensor], list[str]]:
        raise NotImplementedError


class LastLevelMaxPool(ExtraFPNBlock):
    """P6 = P5 subsampled by a 1×1 max-pool of stride 2 (the FPN paper's §4.1, for the RPN's
    512² anchors); named "pool"."""

    def forward(self, results, x, names):
        names.append("pool")
        # kernel 1, stride 2: plain subsampling, as torchvision (not a 3×3 pool)
        results.append(F.max_pool2d(results[-1], kernel_size=1, stride=2, padding=0))
        return results, names


class LastLevelP6P7(ExtraFPNBlock):
    """P6 = conv3×3/2(P5 or C5), P7 = conv3×3/2(ReLU(P6)); named "p6", "p7" (RetinaNet §4).

    P6 is computed from P5 when the widths agree (torchvision's `use_P5`), from C5 otherwise.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.p6 = nn.Conv2d(in_channels, out_channels, 3, 2, 1)
        self.p7 = nn.Conv2d(out_channels, out_channels, 3, 2, 1)
        for module in (self.p6, self.p7):
            nn.init.kaiming_uniform_(module.weight, a=1)
            nn.init.constant_(module.bias, 0)
        self.use_P5 = in_channels == out_channels

    def forward(self, p, c, names):
        p5, c5 = p[-1], c[-1]
        p6 = self.p6(p5 if self.use_P5 else c5)
        p7 = self.p7(F.relu(p6))
        p.extend([p6, p7])
        names.extend(["p6", "p7"])
        return p, names


class FeaturePyramidNetwork(nn.Module):
    """Top-down pyramid over an ordered dict of backbone maps (finest first) → an ordered dict of
    `out_channels`-wide maps with the same keys (plus those of `extra_blocks`).

    `norm_layer` (e.g. nn.BatchNorm2d, as Faster R-CNN v2 uses) goes after every conv, whose
    bias is then dropped; without it the convs keep their bias.
    """

    def __init__(self, in_channels_list: list[int], out_channels: int,
                 extra_blocks: ExtraFPNBlock | None = None, norm_layer=None):
        super().__init__()
        self.inner_blocks = nn.ModuleList()
        self.layer_blocks = nn.ModuleList()
        for in_channels in in_channels_list:
            if in_channels == 0:
                raise CnnkitError("FeaturePyramidNetwork: in_channels=0 is not supported")
            self.inner_blocks.append(ConvNormAct(in_channels, out_channels, 1, padding=0,
                                                 norm=norm_layer, act=None, names=_TV_NAMES))
            self.layer_blocks.append(ConvNormAct(out_channels, out_channels, 3, norm=norm_layer,
                                                 act=None, names=_TV_NAMES))
        # Detectron's "caffe2_xavier": uniform with a=1 (torchvision's FPN init)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)
        if extra_blocks is not None and not isinstance(extra_blocks, ExtraFPNBlock):
            raise CnnkitError(f"extra_blocks must be an ExtraFPNBlock, got "
                              f"{type(extra_blocks).__name__}")
        self.extra_blocks = extra_blocks

    def forward(self, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if len(x) != len(self.inner_blocks):
            raise CnnkitError(f"FeaturePyramidNetwork was built for {len(self.inner_blocks)} "
                              f"maps, got {len(x)}")
        names, feats = list(x.keys()), list(x.values())
        last_inner = self.inner_blocks[-1](feats[-1])
        results = [self.layer_blocks[-1](last_inner)]
        for idx in range(len(feats) - 2, -1, -1):
            lateral = self.inner_blocks[idx](feats[idx])
            # upsample to the lateral's exact size: odd sizes don't halve evenly
            top_down = F.interpolate(last_inner, size=lateral.shape[-2:], mode="nearest")
            last_inner = lateral + top_down
            results.insert(0, self.layer_blocks[idx](last_inner))
        if self.extra_blocks is not None:
            results, names = self.extra_blocks(results, feats, names)
        return OrderedDict(zip(names, results))
