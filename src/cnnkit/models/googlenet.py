"""GoogLeNet (Inception v1) in torchvision's layout (conv1..3, inception3a..5b, fc).

Szegedy et al. 2014, "Going Deeper with Convolutions", https://arxiv.org/abs/1409.4842, as
torchvision builds it: every conv is followed by BatchNorm (eps 1e-3, the value of the TensorFlow
weights torchvision ported), and the "5×5" branch uses a 3×3 conv — a known slip of the port
(pytorch/vision#906) that the published weights depend on, so it is kept.

- `aux_logits=False` (default): no auxiliary classifiers, no `aux1`/`aux2` keys, 6,624,904
  parameters. `aux_logits=True` builds them (torchvision's own checkpoint file carries them, so it
  then loads strictly); `forward_with_aux(x)` returns (logits, aux1, aux2) for a loss that adds
  the auxiliary terms with weight 0.3, as the paper does. `forward` always returns the main logits
  only (cnnkit's trainer expects a tensor), so there the auxiliary heads stay untrained.
- `transform_input=True` re-normalises ImageNet-normalised RGB to the [-1, 1] range the ported
  TensorFlow weights expect (torchvision sets it when it loads them).

Small images: `small_input=True` replaces the 7×7 stride-2 `conv1` with a 3×3 stride-1 one and
drops the two stem max-pools (`maxpool1`, `maxpool2`), the common CIFAR form: a 32×32 image meets
inception3a at 32×32 and inception5b at 8×8 (28×28 → 7×7). Only `conv1.conv.weight` changes shape.
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from cnnkit.layers import ConvNormAct
from cnnkit.models._registry import register_model
from cnnkit.utils import CnnkitError

# torchvision's BasicConv2d: conv (no bias) → BN(eps=1e-3) → ReLU, children `conv`, `bn`
conv_bn = partial(ConvNormAct, norm=partial(nn.BatchNorm2d, eps=1e-3))


def transform_imagenet_input(x: torch.Tensor) -> torch.Tensor:
    """(x·std + mean − 0.5) / 0.5 per channel: ImageNet normalisation → the [-1, 1] scaling of
    the TensorFlow-trained Inception weights."""
    mean = x.new_tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = x.new_tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return x * (std / 0.5) + (mean - 0.5) / 0.5


class Inception(nn.Module):
    """Four parallel branches concatenated on channels: 1×1 | 1×1→3×3 | 1×1→3×3 | maxpool→1×1."""

    def __init__(self, in_channels: int, ch1x1: int, ch3x3red: int, ch3x3: int, ch5x5red: int,
                 ch5x5: int, pool_proj: int):
        super().__init__()
        self.branch1 = conv_bn(in_channels, ch1x1, 1)
        self.branch2 = nn.Sequential(conv_bn(in_channels, ch3x3red, 1),
                                     conv_bn(ch3x3red, ch3x3, 3))
        # the paper's 5×5, built as 3×3 by torchvision (see the module docstring)
        self.branch3 = nn.Sequential(conv_bn(in_channels, ch5x5red, 1),
                                     conv_bn(ch5x5red, ch5x5, 3))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1, ceil_mode=True),
                                     conv_bn(in_channels, pool_proj, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = (self.branch1, self.branch2, self.branch3, self.branch4)
        return torch.cat([branch(x) for branch in branches], 1)  # (N, sum of widths, H, W)


class InceptionAux(nn.Module):
    """Auxiliary classifier on an intermediate map: pool to 4×4 → 1×1 conv 128 → fc 1024 → fc."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.7):
        super().__init__()
        self.conv = conv_bn(in_channels, 128, 1)
        self.fc1 = nn.Linear(128 * 4 * 4, 1024)
        self.fc2 = nn.Linear(1024, num_classes)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(F.adaptive_avg_pool2d(x, 4))  # (N, 128, 4, 4)
        x = F.relu(self.fc1(torch.flatten(x, 1)), inplace=True)  # (N, 2048) → (N, 1024)
        return self.fc2(self.dropout(x))


class GoogLeNet(nn.Module):
    """Stem → inception 3a-3b → pool → 4a-4e → pool → 5a-5b → global pool → dropout → fc."""

    def __init__(self, *, num_classes: int = 1000, in_chans: int = 3, aux_logits: bool = False,
                 transform_input: bool = False, dropout: float = 0.2, dropout_aux: float = 0.7,
                 small_input: bool = False):
        super().__init__()
        if transform_input and in_chans != 3:
            raise CnnkitError("transform_input re-normalises RGB images: drop it or use in_chans=3")
        self.num_classes, self.in_chans = num_classes, in_chans
        self.aux_logits, self.transform_input = aux_logits, transform_input
        if small_input:
            self.conv1 = conv_bn(in_chans, 64, 3)
        else:
            self.conv1 = conv_bn(in_chans, 64, 7, stride=2)
        pool = partial(nn.MaxPool2d, 3, stride=2, ceil_mode=True)
        self.maxpool1 = nn.Identity() if small_input else pool()
        self.conv2 = conv_bn(64, 64, 1)
        self.conv3 = conv_bn(64, 192, 3)
        self.maxpool2 = nn.Identity() if small_input else pool()
        # (in, 1×1, 3×3 reduce, 3×3, "5×5" reduce, "5×5", pool proj): Table 1 of the paper
        self.inception3a = Inception(192, 64, 96, 128, 16, 32, 32)
        self.inception3b = Inception(256, 128, 128, 192, 32, 96, 64)
        self.maxpool3 = pool()
        self.inception4a = Inception(480, 192, 96, 208, 16, 48, 64)
        self.inception4b = Inception(512, 160, 112, 224, 24, 64, 64)
        self.inception4c = Inception(512, 128, 128, 256, 24, 64, 64)
        self.inception4d = Inception(512, 112, 144, 288, 32, 64, 64)
        self.inception4e = Inception(528, 256, 160, 320, 32, 128, 128)
        self.maxpool4 = nn.MaxPool2d(2, stride=2, ceil_mode=True)
        self.inception5a = Inception(832, 256, 160, 320, 32, 128, 128)
        self.inception5b = Inception(832, 384, 192, 384, 48, 128, 128)
        if aux_logits:  # registered here, before fc, as in torchvision: fc stays the last Linear
            self.aux1 = InceptionAux(512, num_classes, dropout_aux)
            self.aux2 = InceptionAux(528, num_classes, dropout_aux)
        self.num_features = 1024
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(1024, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's scheme: truncated normal, std 0.01, cut at ±2 (absolute, i.e. ±200 σ), for
        # every conv and linear weight; Linear biases keep PyTorch's default; BN at identity.
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, mean=0.0, std=0.01, a=-2, b=2)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _stages(self, x: torch.Tensor, with_aux: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if self.transform_input:
            x = transform_imagenet_input(x)
        x = self.maxpool1(self.conv1(x))  # (N, 64, 56, 56) at 224; 32×32 stays 32×32 if small
        x = self.maxpool2(self.conv3(self.conv2(x)))  # (N, 192, 28, 28)
        x = self.maxpool3(self.inception3b(self.inception3a(x)))  # (N, 480, 14, 14)
        x = self.inception4a(x)  # (N, 512, 14, 14)
        aux = [self.aux1(x)] if with_aux else []
        x = self.inception4d(self.inception4c(self.inception4b(x)))  # (N, 528, 14, 14)
        aux += [self.aux2(x)] if with_aux else []
        x = self.maxpool4(self.inception4e(x))  # (N, 832, 7, 7)
        return self.inception5b(self.inception5a(x)), aux  # (N, 1024, 7, 7)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._stages(x, with_aux=False)[0]

    def forward_with_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits, aux1 logits, aux2 logits) for a training loss; needs `aux_logits=True`."""
        if not self.aux_logits:
            raise ValueError("this GoogLeNet has no auxiliary classifiers: build it with "
                             "aux_logits=True")
        features, (aux1, aux2) = self._stages(x, with_aux=True)
        return self.forward_head(features), aux1, aux2

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(x), 1)  # (N, 1024)
        return self.fc(self.dropout(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _build_googlenet(num_classes: int, in_chans: int, **kwargs) -> GoogLeNet:
    return GoogLeNet(num_classes=num_classes, in_chans=in_chans, **kwargs)


# --- registered variant ---
@register_model(test_input_size=(3, 32, 32), test_kwargs={"small_input": True})
def googlenet(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> GoogLeNet:
    return _build_googlenet(num_classes, in_chans, **kwargs)
