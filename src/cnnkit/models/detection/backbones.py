"""Classification networks as FPN backbones (torchvision `models/detection/backbone_utils.py`).

`BackboneWithFPN` = `body` (the network's children up to the last returned stage, keeping their
names, so a classification checkpoint loads into `backbone.body`) + `fpn`. The extractors freeze
the first stages: `trainable_layers` counts the trainable stages from the top (ResNet: layer4,
layer3, layer2, layer1, conv1 — 5 also trains bn1; MobileNetV3: its stride-changing blocks).

Norm: torchvision builds untrained backbones with plain BatchNorm2d (what `norm="bn"` does) and
pretrained ones with `FrozenBatchNorm2d` — fixed statistics and affine, right for fine-tuning
with the few images per batch detection affords (`norm="frozen"`).
"""
from __future__ import annotations

import torch
from torch import nn

from cnnkit.layers.fpn import ExtraFPNBlock, FeaturePyramidNetwork, LastLevelMaxPool
from cnnkit.models.segmentation import IntermediateLayerGetter
from cnnkit.utils import CnnkitError

__all__ = ["FrozenBatchNorm2d", "BackboneWithFPN", "resnet_fpn_backbone", "mobilenet_backbone",
           "_resnet_fpn_extractor", "_mobilenet_extractor", "set_backbone_norm"]


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters, all buffers (torchvision
    `ops.misc.FrozenBatchNorm2d`). Loads a BatchNorm2d state_dict (num_batches_tracked dropped)."""

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # one multiply-add: scale = w / sqrt(var + eps), shift = b - mean·scale
        scale = self.weight.reshape(1, -1, 1, 1) * (self.running_var.reshape(1, -1, 1, 1)
                                                    + self.eps).rsqrt()
        shift = self.bias.reshape(1, -1, 1, 1) - self.running_mean.reshape(1, -1, 1, 1) * scale
        return x * scale + shift

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def set_backbone_norm(model: nn.Module, norm: str) -> nn.Module:
    """Give every BatchNorm2d of `model` torchvision's detection setting, in place: "bn" —
    eps 1e-5, momentum 0.1 (torchvision passes norm_layer=nn.BatchNorm2d, which also replaces
    MobileNetV3's eps 1e-3 / momentum 0.01) — or "frozen" — FrozenBatchNorm2d holding the same
    statistics and affine."""
    if norm not in ("bn", "frozen"):
        raise CnnkitError(f"unknown backbone norm {norm!r}; choose 'bn' or 'frozen'")
    for name, child in model.named_children():
        if isinstance(child, nn.BatchNorm2d):
            if norm == "bn":
                child.eps, child.momentum = 1e-5, 0.1
                continue
            frozen = FrozenBatchNorm2d(child.num_features)
            for key in ("weight", "bias", "running_mean", "running_var"):
                getattr(frozen, key).copy_(getattr(child, key).detach())
            setattr(model, name, frozen)
        else:
            set_backbone_norm(child, norm)
    return model


class BackboneWithFPN(nn.Module):
    """`body` returns the maps named in `return_layers` ({child name: output name}); `fpn`
    turns them into `out_channels`-wide pyramid levels (plus LastLevelMaxPool's "pool" unless
    other `extra_blocks` are given)."""

    def __init__(self, backbone: nn.Module, return_layers: dict[str, str],
                 in_channels_list: list[int], out_channels: int,
                 extra_blocks: ExtraFPNBlock | None = None, norm_layer=None):
        super().__init__()
        if extra_blocks is None:
            extra_blocks = LastLevelMaxPool()
        self.body = IntermediateLayerGetter(backbone, return_layers=return_layers)
        self.fpn = FeaturePyramidNetwork(in_channels_list, out_channels,
                                         extra_blocks=extra_blocks, norm_layer=norm_layer)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.fpn(self.body(x))


def _resnet_fpn_extractor(backbone: nn.Module, trainable_layers: int,
                          returned_layers: list[int] | None = None,
                          extra_blocks: ExtraFPNBlock | None = None, norm_layer=None,
                          out_channels: int = 256) -> BackboneWithFPN:
    """A ResNet with an FPN over `returned_layers` (default layer1..4, named "0".."3");
    `norm_layer` is the FPN's norm, `out_channels` its width (torchvision: always 256)."""
    if not 0 <= trainable_layers <= 5:
        raise CnnkitError(f"trainable_layers must be in [0, 5], got {trainable_layers}")
    layers_to_train = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers]
    if trainable_layers == 5:
        layers_to_train.append("bn1")
    for name, parameter in backbone.named_parameters():
        if not any(name.startswith(layer) for layer in layers_to_train):
            parameter.requires_grad_(False)
    if returned_layers is None:
        returned_layers = [1, 2, 3, 4]
    if min(returned_layers) <= 0 or max(returned_layers) >= 5:
        raise CnnkitError(f"returned_layers must lie in [1, 4], got {returned_layers}")
    return_layers = {f"layer{k}": str(v) for v, k in enumerate(returned_layers)}
    # stage widths double from layer1: C/8, C/4, C/2, C for a C-wide layer4
    in_channels_stage2 = backbone.num_features // 8
    in_channels_list = [in_channels_stage2 * 2 ** (i - 1) for i in returned_layers]
    return BackboneWithFPN(backbone, return_layers, in_channels_list, out_channels,
                           extra_blocks=extra_blocks, norm_layer=norm_layer)


def resnet_fpn_backbone(*, backbone_name: str | nn.Module = "resnet50", trainable_layers: int = 3,
                        returned_layers: list[int] | None = None,
                        extra_blocks: ExtraFPNBlock | None = None, norm_layer=None,
                        backbone_norm: str = "bn", out_channels: int = 256) -> BackboneWithFPN:
    """A registered ResNet by name (or an already built cnnkit ResNet) with an FPN.

    Unlike torchvision's function of this name, `norm_layer` is the FPN's norm; the backbone's
    is `backbone_norm` ("bn" or "frozen").
    """
    if isinstance(backbone_name, str):
        from cnnkit.models._registry import create_model  # noqa: PLC0415 (registry imports us)
        backbone = create_model(backbone_name)
    else:
        backbone = backbone_name
    if not hasattr(backbone, "layer4"):
        raise CnnkitError(f"resnet_fpn_backbone needs a ResNet (layer1..4), got "
                          f"{type(backbone).__name__}")
    set_backbone_norm(backbone, backbone_norm)
    return _resnet_fpn_extractor(backbone, trainable_layers, returned_layers, extra_blocks,
                                 norm_layer, out_channels)


def _mobilenet_extractor(backbone: nn.Module, fpn: bool, trainable_layers: int,
                         returned_layers: list[int] | None = None,
                         extra_blocks: ExtraFPNBlock | None = None, norm_layer=None,
                         out_channels: int = 256) -> nn.Module:
    """MobileNet `features` as a backbone. Stages start at the stem, every stride-2 block and
    the last conv; with `fpn`, the outputs of the last two of those stages ("0", "1") feed an
    FPN, otherwise a 1×1 conv maps the last output to `out_channels`."""
    features = backbone.features
    stage_indices = ([0] + [i for i, b in enumerate(features)
                            if getattr(b, "stage_start", getattr(b, "_is_cn", False))]
                     + [len(features) - 1])
    num_stages = len(stage_indices)
    if not 0 <= trainable_layers <= num_stages:
        raise CnnkitError(f"trainable_layers must be in [0, {num_stages}], got "
                          f"{trainable_layers}")
    freeze_before = (len(features) if trainable_layers == 0
                     else stage_indices[num_stages - trainable_layers])
    for block in features[:freeze_before]:
        for parameter in block.parameters():
            parameter.requires_grad_(False)
    if not fpn:
        m = nn.Sequential(features, nn.Conv2d(features[-1].out_channels, out_channels, 1))
        m.out_channels = out_channels
        return m
    if returned_layers is None:
        returned_layers = [num_stages - 2, num_stages - 1]
    if min(returned_layers) < 0 or max(returned_layers) >= num_stages:
        raise CnnkitError(f"returned_layers must lie in [0, {num_stages - 1}], got "
                          f"{returned_layers}")
    return_layers = {f"{stage_indices[k]}": str(v) for v, k in enumerate(returned_layers)}
    in_channels_list = [features[stage_indices[i]].out_channels for i in returned_layers]
    return BackboneWithFPN(features, return_layers, in_channels_list, out_channels,
                           extra_blocks=extra_blocks, norm_layer=norm_layer)


def mobilenet_backbone(*, backbone_name: str | nn.Module = "mobilenet_v3_large", fpn: bool = True,
                       trainable_layers: int = 2, returned_layers: list[int] | None = None,
                       extra_blocks: ExtraFPNBlock | None = None, norm_layer=None,
                       backbone_norm: str = "bn") -> nn.Module:
    """A registered MobileNet by name (or a built one) as an FPN (or single-map) backbone."""
    if isinstance(backbone_name, str):
        from cnnkit.models._registry import create_model  # noqa: PLC0415
        backbone = create_model(backbone_name)
    else:
        backbone = backbone_name
    set_backbone_norm(backbone, backbone_norm)
    return _mobilenet_extractor(backbone, fpn, trainable_layers, returned_layers, extra_blocks,
                                norm_layer)
