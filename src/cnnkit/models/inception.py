"""Inception v3 in torchvision's layout (Conv2d_1a_3x3 … Mixed_7c, fc).

Szegedy et al. 2015, "Rethinking the Inception Architecture for Computer Vision",
https://arxiv.org/abs/1512.00567: a stem of plain convs, then three kinds of inception modules —
35×35 (A, Fig. 5), 17×17 with n×n convs factorised into 1×7 and 7×1 (C, Fig. 6), 8×8 with the
expanded 1×3 / 3×1 filter bank (E, Fig. 7) — joined by grid-size reductions (B, D; §7) that pool
and convolve with stride 2 in parallel. Every conv is followed by BatchNorm (eps 1e-3, from the
ported TensorFlow weights). Designed for 299×299 inputs; torchvision's smallest is 75×75.

- `aux_logits=False` (default): no auxiliary classifier, no `AuxLogits` keys, 23,834,568
  parameters. `aux_logits=True` builds it on Mixed_6e (torchvision's checkpoint file carries it, so
  it then loads strictly); `forward_with_aux(x)` returns (logits, aux logits) for a training loss.
  `forward` always returns the main logits only (cnnkit's trainer expects a tensor).
- `transform_input=True` re-normalises ImageNet-normalised RGB to the [-1, 1] range of the ported
  TensorFlow weights (torchvision sets it when it loads them).

Small images: `small_input=True` keeps every layer and every weight shape but gives the stem's
three valid 3×3 convs a padding of 1, takes the stride out of `Conv2d_1a_3x3` and drops
`maxpool1`: a 32×32 image meets Mixed_5b at 15×15 and Mixed_7c at 3×3 (28×28 → 13×13 → 2×2),
where the 299×299 design has 35×35 and 8×8. Not with `aux_logits` (its 5×5 conv needs 17×17 maps).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cnnkit.models._registry import register_model
from cnnkit.models.googlenet import conv_bn, transform_imagenet_input
from cnnkit.utils import CnnkitError

# --- inception modules (channel counts as in torchvision, i.e. as in the TensorFlow weights) ---


class InceptionA(nn.Module):
    """35×35 module: 1×1 | 1×1→5×5 | 1×1→3×3→3×3 | avgpool→1×1; 224 + `pool_features` channels."""

    def __init__(self, in_channels: int, pool_features: int):
        super().__init__()
        self.branch1x1 = conv_bn(in_channels, 64, 1)
        self.branch5x5_1 = conv_bn(in_channels, 48, 1)
        self.branch5x5_2 = conv_bn(48, 64, 5)
        self.branch3x3dbl_1 = conv_bn(in_channels, 64, 1)
        self.branch3x3dbl_2 = conv_bn(64, 96, 3)
        self.branch3x3dbl_3 = conv_bn(96, 96, 3)
        self.branch_pool = conv_bn(in_channels, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        pool = self.branch_pool(F.avg_pool2d(x, 3, stride=1, padding=1))
        return torch.cat([self.branch1x1(x), b5, b3, pool], 1)  # (N, 224 + pool_features, H, W)


class InceptionB(nn.Module):
    """Grid reduction 35 → 17: stride-2 3×3 | 1×1→3×3→stride-2 3×3 | stride-2 max-pool."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3 = conv_bn(in_channels, 384, 3, stride=2, padding=0)
        self.branch3x3dbl_1 = conv_bn(in_channels, 64, 1)
        self.branch3x3dbl_2 = conv_bn(64, 96, 3)
        self.branch3x3dbl_3 = conv_bn(96, 96, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        pool = F.max_pool2d(x, 3, stride=2)
        return torch.cat([self.branch3x3(x), b3dbl, pool], 1)  # (N, 480 + C_in, (H-3)/2+1, ..)


class InceptionC(nn.Module):
    """17×17 module with 7×7 convs factorised into 1×7 and 7×1 (`c7` inner channels); 768 out."""

    def __init__(self, in_channels: int, c7: int):
        super().__init__()
        self.branch1x1 = conv_bn(in_channels, 192, 1)
        self.branch7x7_1 = conv_bn(in_channels, c7, 1)
        self.branch7x7_2 = conv_bn(c7, c7, (1, 7))
        self.branch7x7_3 = conv_bn(c7, 192, (7, 1))
        self.branch7x7dbl_1 = conv_bn(in_channels, c7, 1)
        self.branch7x7dbl_2 = conv_bn(c7, c7, (7, 1))
        self.branch7x7dbl_3 = conv_bn(c7, c7, (1, 7))
        self.branch7x7dbl_4 = conv_bn(c7, c7, (7, 1))
        self.branch7x7dbl_5 = conv_bn(c7, 192, (1, 7))
        self.branch_pool = conv_bn(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        b7dbl = self.branch7x7dbl_1(x)
        for conv in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                     self.branch7x7dbl_5):
            b7dbl = conv(b7dbl)
        pool = self.branch_pool(F.avg_pool2d(x, 3, stride=1, padding=1))
        return torch.cat([self.branch1x1(x), b7, b7dbl, pool], 1)  # (N, 768, H, W)


class InceptionD(nn.Module):
    """Grid reduction 17 → 8: 1×1→stride-2 3×3 | 1×1→1×7→7×1→stride-2 3×3 | stride-2 max-pool."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3_1 = conv_bn(in_channels, 192, 1)
        self.branch3x3_2 = conv_bn(192, 320, 3, stride=2, padding=0)
        self.branch7x7x3_1 = conv_bn(in_channels, 192, 1)
        self.branch7x7x3_2 = conv_bn(192, 192, (1, 7))
        self.branch7x7x3_3 = conv_bn(192, 192, (7, 1))
        self.branch7x7x3_4 = conv_bn(192, 192, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_1(x)
        for conv in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b7 = conv(b7)
        pool = F.max_pool2d(x, 3, stride=2)
        return torch.cat([b3, b7, pool], 1)  # (N, 512 + C_in, (H-3)/2+1, (W-3)/2+1)


class InceptionE(nn.Module):
    """8×8 module whose 3×3 branches split into parallel 1×3 and 3×1 convs; 2048 channels out."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch1x1 = conv_bn(in_channels, 320, 1)
        self.branch3x3_1 = conv_bn(in_channels, 384, 1)
        self.branch3x3_2a = conv_bn(384, 384, (1, 3))
        self.branch3x3_2b = conv_bn(384, 384, (3, 1))
        self.branch3x3dbl_1 = conv_bn(in_channels, 448, 1)
        self.branch3x3dbl_2 = conv_bn(448, 384, 3)
        self.branch3x3dbl_3a = conv_bn(384, 384, (1, 3))
        self.branch3x3dbl_3b = conv_bn(384, 384, (3, 1))
        self.branch_pool = conv_bn(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)  # (N, 768, H, W)
        b3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        b3dbl = torch.cat([self.branch3x3dbl_3a(b3dbl), self.branch3x3dbl_3b(b3dbl)], 1)
        pool = self.branch_pool(F.avg_pool2d(x, 3, stride=1, padding=1))
        return torch.cat([self.branch1x1(x), b3, b3dbl, pool], 1)  # (N, 2048, H, W)


class InceptionAux(nn.Module):
    """Auxiliary classifier on the 17×17 map: avgpool 5/3 → 1×1 conv 128 → 5×5 conv 768 → fc."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.conv0 = conv_bn(in_channels, 128, 1)
        self.conv1 = conv_bn(128, 768, 5, padding=0)
        self.fc = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.avg_pool2d(x, 5, stride=3)  # (N, 768, 17, 17) → (N, 768, 5, 5)
        x = self.conv1(self.conv0(x))  # (N, 128, 5, 5) → (N, 768, 1, 1)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# --- the network ---


class InceptionV3(nn.Module):
    """Stem → 3× A → B → 4× C → D → 2× E → global pool → dropout → fc."""

    def __init__(self, *, num_classes: int = 1000, in_chans: int = 3, aux_logits: bool = False,
                 transform_input: bool = False, dropout: float = 0.5, small_input: bool = False):
        super().__init__()
        if transform_input and in_chans != 3:
            raise CnnkitError("transform_input re-normalises RGB images: drop it or use in_chans=3")
        if aux_logits and small_input:
            raise CnnkitError("the auxiliary classifier needs the 299×299 stem: use aux_logits "
                              "without small_input")
        self.num_classes, self.in_chans = num_classes, in_chans
        self.aux_logits, self.transform_input = aux_logits, transform_input
        valid = 1 if small_input else 0  # padding of the stem's three "valid" 3×3 convs
        self.Conv2d_1a_3x3 = conv_bn(in_chans, 32, 3, stride=1 if small_input else 2, padding=valid)
        self.Conv2d_2a_3x3 = conv_bn(32, 32, 3, padding=valid)
        self.Conv2d_2b_3x3 = conv_bn(32, 64, 3)
        self.maxpool1 = nn.Identity() if small_input else nn.MaxPool2d(3, stride=2)
        self.Conv2d_3b_1x1 = conv_bn(64, 80, 1)
        self.Conv2d_4a_3x3 = conv_bn(80, 192, 3, padding=valid)
        self.maxpool2 = nn.MaxPool2d(3, stride=2)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, c7=128)
        self.Mixed_6c = InceptionC(768, c7=160)
        self.Mixed_6d = InceptionC(768, c7=160)
        self.Mixed_6e = InceptionC(768, c7=192)
        if aux_logits:  # registered here, as in torchvision: fc stays the last Linear
            self.AuxLogits = InceptionAux(768, num_classes)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280)
        self.Mixed_7c = InceptionE(2048)
        self.num_features = 2048
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(2048, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's scheme: truncated normal cut at ±2 (absolute) for conv and linear weights,
        # std 0.1, except AuxLogits.fc with std 0.001. (torchvision also tags AuxLogits.conv1 with
        # std 0.01, but on the wrapper module its init loop never matches, so that conv gets 0.1.)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, mean=0.0, std=0.1, a=-2, b=2)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if self.aux_logits:
            nn.init.trunc_normal_(self.AuxLogits.fc.weight, mean=0.0, std=0.001, a=-2, b=2)

    def _stages(self, x: torch.Tensor, with_aux: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.transform_input:
            x = transform_imagenet_input(x)
        x = self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x))  # (N, 32, 147, 147) at 299
        x = self.maxpool1(self.Conv2d_2b_3x3(x))  # (N, 64, 73, 73)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))  # (N, 192, 71, 71)
        x = self.maxpool2(x)  # (N, 192, 35, 35); 15×15 for 32×32 if small
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))  # (N, 288, 35, 35)
        x = self.Mixed_6a(x)  # (N, 768, 17, 17)
        x = self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(x))))  # (N, 768, 17, 17)
        aux = self.AuxLogits(x) if with_aux else None
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))  # (N, 2048, 8, 8); 3×3 if small
        return x, aux

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._stages(x, with_aux=False)[0]

    def forward_with_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, auxiliary logits) for a training loss; needs `aux_logits=True`."""
        if not self.aux_logits:
            raise ValueError("this Inception v3 has no auxiliary classifier: build it with "
                             "aux_logits=True")
        features, aux = self._stages(x, with_aux=True)
        return self.forward_head(features), aux

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(self.avgpool(x))  # (N, 2048, 1, 1)
        return self.fc(torch.flatten(x, 1))  # (N, 2048) → (N, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _build_inception_v3(num_classes: int, in_chans: int, **kwargs) -> InceptionV3:
    return InceptionV3(num_classes=num_classes, in_chans=in_chans, **kwargs)


# --- registered variant ---
@register_model(input_size=(3, 299, 299), test_input_size=(3, 32, 32),
                test_kwargs={"small_input": True})
def inception_v3(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> InceptionV3:
    return _build_inception_v3(num_classes, in_chans, **kwargs)
