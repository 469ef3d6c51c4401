"""torchvision's semantic-segmentation models, with its state_dict layout so its checkpoints load.

- FCN: Long, Shelhamer & Darrell 2015, "Fully Convolutional Networks for Semantic Segmentation",
  https://arxiv.org/abs/1411.4038. torchvision's `fcn_resnet50` is the paper's idea on a dilated
  ResNet-50 (output stride 8) with a 3×3 conv head, not the paper's VGG-16 FCN-8s with skips.
- DeepLabV3: Chen et al. 2017, "Rethinking Atrous Convolution for Semantic Image Segmentation",
  https://arxiv.org/abs/1706.05587: atrous spatial pyramid pooling (ASPP, §3.3) over a dilated
  backbone — rates 12/24/36 at output stride 8 (ResNet-50) as torchvision uses, and at 16
  (MobileNetV3, where the paper would use 6/12/18).
- LR-ASPP: Howard et al. 2019, "Searching for MobileNetV3" (its segmentation section),
  https://arxiv.org/abs/1905.02244: a 1×1 conv gated by a global-pool branch (squeeze-excitation
  style) on the 1/16 features, plus a 1×1 classifier on the 1/8 features.

Each model is `backbone` (the classification network's layers up to the last one used, kept under
their own names, torchvision's `IntermediateLayerGetter`) → `classifier` (→ `aux_classifier` on an
earlier stage, for the auxiliary loss) → bilinear upsampling to the input size.

Unlike torchvision, `forward` returns the logits tensor (N, num_classes, H, W), not a dict;
`forward_dict` returns torchvision's {"out": ..., "aux": ...} for training with `aux_loss=True`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cnnkit.layers import ConvNormAct
from cnnkit.models._registry import register_model
from cnnkit.models.mobilenet import mobilenet_v3_large
from cnnkit.models.resnet import resnet50
from cnnkit.utils import CnnkitError

_TV_NAMES = ("0", "1", "2")  # torchvision's Sequential indices, for checkpoint keys


def _conv_bn_relu(in_channels: int, out_channels: int, kernel: int, **kwargs) -> list[nn.Module]:
    """ConvNormAct's conv, BN and ReLU as loose modules, for torchvision's flat Sequential heads
    (keys `0`, `1`, `2` beside a dropout and the classifier conv in the same Sequential)."""
    return list(ConvNormAct(in_channels, out_channels, kernel, **kwargs).children())


def _resize(logits: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    # (N, K, h, w) → (N, K, H, W), as torchvision: bilinear, align_corners=False
    return F.interpolate(logits, size=image.shape[-2:], mode="bilinear", align_corners=False)


# --- backbone adapter ---

class IntermediateLayerGetter(nn.ModuleDict):
    """A network's children up to the last one in `return_layers`, run in order; returns
    {new name: output} for those named (torchvision's `models._utils.IntermediateLayerGetter`).

    Keeping the children's own names is what makes the keys `backbone.layer1...` (ResNet) and
    `backbone.0...` (MobileNetV3 `features`); the unused tail (pool, fc) is dropped.
    """

    def __init__(self, model: nn.Module, return_layers: dict[str, str]):
        remaining = set(return_layers)
        unknown = remaining - {name for name, _ in model.named_children()}
        if unknown:
            raise CnnkitError(f"return_layers {sorted(unknown)} are not children of "
                              f"{type(model).__name__}")
        layers = {}
        for name, module in model.named_children():
            layers[name] = module
            remaining.discard(name)
            if not remaining:
                break
        super().__init__(layers)
        self.return_layers = dict(return_layers)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        for name, module in self.items():
            x = module(x)
            if name in self.return_layers:
                out[self.return_layers[name]] = x
        return out


# --- heads ---

class FCNHead(nn.Sequential):
    """3×3 conv to a quarter of the channels → BN → ReLU → dropout 0.1 → 1×1 conv to classes."""

    def __init__(self, in_channels: int, num_classes: int):
        inter = in_channels // 4
        super().__init__(*_conv_bn_relu(in_channels, inter, 3), nn.Dropout(0.1),
                         nn.Conv2d(inter, num_classes, 1))


class ASPPPooling(nn.Sequential):
    """Image-level features (DeepLabV3 §3.3): global average pool → 1×1 conv → BN → ReLU,
    broadcast back to the feature map's size."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(nn.AdaptiveAvgPool2d(1), *_conv_bn_relu(in_channels, out_channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = super().forward(x)  # (N, C, 1, 1)
        return F.interpolate(pooled, size=x.shape[-2:], mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: a 1×1 conv, three 3×3 convs dilated by `rates`, and the
    pooled branch, concatenated (5·256 channels) and projected back to 256 (+ dropout 0.5)."""

    def __init__(self, in_channels: int, rates: tuple[int, ...] = (12, 24, 36),
                 out_channels: int = 256):
        super().__init__()
        branches = [ConvNormAct(in_channels, out_channels, 1, names=_TV_NAMES)]
        # a 3×3 conv dilated by r sees a (2r + 1)² window with 9 weights: multi-scale context
        branches += [ConvNormAct(in_channels, out_channels, 3, dilation=r, names=_TV_NAMES)
                     for r in rates]
        branches.append(ASPPPooling(in_channels, out_channels))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(
            *_conv_bn_relu(len(branches) * out_channels, out_channels, 1), nn.Dropout(0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pyramid = torch.cat([branch(x) for branch in self.convs], dim=1)  # (N, 5·256, h, w)
        return self.project(pyramid)  # (N, 256, h, w)


class DeepLabHead(nn.Sequential):
    """ASPP → 3×3 conv → BN → ReLU → 1×1 conv to classes."""

    def __init__(self, in_channels: int, num_classes: int, rates: tuple[int, ...] = (12, 24, 36)):
        super().__init__(ASPP(in_channels, rates), *_conv_bn_relu(256, 256, 3),
                         nn.Conv2d(256, num_classes, 1))


class LRASPPHead(nn.Module):
    """Lite R-ASPP: 1×1 conv + BN + ReLU on the 1/16 features, times a sigmoid gate from their
    global average, upsampled to 1/8 and classified, plus a 1×1 classifier on the 1/8 features."""

    def __init__(self, low_channels: int, high_channels: int, num_classes: int,
                 inter_channels: int = 128):
        super().__init__()
        self.cbr = ConvNormAct(high_channels, inter_channels, 1, names=_TV_NAMES)
        self.scale = nn.Sequential(nn.AdaptiveAvgPool2d(1),
                                   nn.Conv2d(high_channels, inter_channels, 1, bias=False),
                                   nn.Sigmoid())
        self.low_classifier = nn.Conv2d(low_channels, num_classes, 1)
        self.high_classifier = nn.Conv2d(inter_channels, num_classes, 1)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        low, high = features["low"], features["high"]
        x = self.cbr(high) * self.scale(high)  # (N, 128, h, w) · (N, 128, 1, 1)
        x = F.interpolate(x, size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.low_classifier(low) + self.high_classifier(x)  # (N, K, 2h, 2w)


# --- models ---

class SegmentationModel(nn.Module):
    """backbone → classifier → logits upsampled to the input size (torchvision's
    `_SimpleSegmentationModel`); the optional `aux_classifier` reads the backbone's "aux" stage.

    Heads keep PyTorch's default initialisation and the backbone its own, as in torchvision.
    """

    dense_output = True  # per-pixel logits (tests/models/test_zoo.py)

    def __init__(self, backbone: nn.Module, classifier: nn.Module,
                 aux_classifier: nn.Module | None = None, *, num_classes: int, in_chans: int):
        super().__init__()
        self.num_classes, self.in_chans = num_classes, in_chans
        self.backbone = backbone
        self.classifier = classifier
        self.aux_classifier = aux_classifier

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.backbone(x)  # {"out": (N, C, H/s, W/s), "aux": ...}

    def forward_head(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.classifier(features["out"])  # (N, K, H/s, W/s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _resize(self.forward_head(self.forward_features(x)), x)

    def forward_dict(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """torchvision's output: {"out": logits, "aux": auxiliary logits (with aux_loss)}."""
        features = self.forward_features(x)
        result = {"out": _resize(self.forward_head(features), x)}
        if self.aux_classifier is not None:
            result["aux"] = _resize(self.aux_classifier(features["aux"]), x)
        return result


class FCN(SegmentationModel):
    """Fully convolutional network (Long et al. 2015): FCNHead on a dilated ResNet."""


class DeepLabV3(SegmentationModel):
    """DeepLabV3 (Chen et al. 2017): ASPP head on a dilated backbone."""


class LRASPP(SegmentationModel):
    """Lite R-ASPP (Howard et al. 2019): its head reads the 1/8 ("low") and 1/16 ("high") stages."""

    def forward_head(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.classifier(features)


def _dilated_resnet50(in_chans: int, aux_loss: bool) -> IntermediateLayerGetter:
    # layer3 and layer4 dilated instead of strided: output stride 8 (DeepLabV3 §3.1)
    resnet = resnet50(in_chans=in_chans, replace_stride_with_dilation=(False, True, True))
    layers = {"layer4": "out", **({"layer3": "aux"} if aux_loss else {})}
    return IntermediateLayerGetter(resnet, layers)


def _dilated_mobilenet_v3_large(in_chans: int) -> tuple[nn.Sequential, int, int]:
    """MobileNetV3-Large `features` with the last stage dilated, and the indices of its C2 (1/8)
    and C5 (1/16) outputs: the stem, each stage's first block, and the last conv are stage ends."""
    features = mobilenet_v3_large(in_chans=in_chans, dilated=True).features
    stages = [0] + [i for i, block in enumerate(features) if getattr(block, "stage_start", False)]
    stages.append(len(features) - 1)
    return features, stages[-4], stages[-1]


def _build_resnet_seg(head: type[nn.Module], model_cls: type[SegmentationModel], num_classes: int,
                      in_chans: int, aux_loss: bool) -> SegmentationModel:
    aux = FCNHead(1024, num_classes) if aux_loss else None  # on layer3 (1024 channels)
    return model_cls(_dilated_resnet50(in_chans, aux_loss), head(2048, num_classes), aux,
                     num_classes=num_classes, in_chans=in_chans)


# --- registered variants (torchvision's defaults: 21 VOC classes, no auxiliary head) ---
_SEG = {"input_size": (3, 520, 520), "test_input_size": (3, 64, 64)}


@register_model(**_SEG)
def fcn_resnet50(num_classes: int = 21, in_chans: int = 3, *, aux_loss: bool = False) -> FCN:
    return _build_resnet_seg(FCNHead, FCN, num_classes, in_chans, aux_loss)


@register_model(**_SEG)
def deeplabv3_resnet50(num_classes: int = 21, in_chans: int = 3, *,
                       aux_loss: bool = False) -> DeepLabV3:
    return _build_resnet_seg(DeepLabHead, DeepLabV3, num_classes, in_chans, aux_loss)


@register_model(**_SEG)
def deeplabv3_mobilenet_v3_large(num_classes: int = 21, in_chans: int = 3, *,
                                 aux_loss: bool = False) -> DeepLabV3:
    features, low, high = _dilated_mobilenet_v3_large(in_chans)
    layers = {str(high): "out", **({str(low): "aux"} if aux_loss else {})}
    aux = FCNHead(features[low].out_channels, num_classes) if aux_loss else None
    return DeepLabV3(IntermediateLayerGetter(features, layers),
                     DeepLabHead(features[high].out_channels, num_classes), aux,
                     num_classes=num_classes, in_chans=in_chans)


@register_model(**_SEG)
def lraspp_mobilenet_v3_large(num_classes: int = 21, in_chans: int = 3, *,
                              aux_loss: bool = False) -> LRASPP:
    if aux_loss:
        raise CnnkitError("lraspp_mobilenet_v3_large has no auxiliary head (as in torchvision): "
                          "drop aux_loss")
    features, low, high = _dilated_mobilenet_v3_large(in_chans)
    head = LRASPPHead(features[low].out_channels, features[high].out_channels, num_classes)
    return LRASPP(IntermediateLayerGetter(features, {str(low): "low", str(high): "high"}), head,
                  num_classes=num_classes, in_chans=in_chans)
