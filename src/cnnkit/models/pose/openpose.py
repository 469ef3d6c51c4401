"""OpenPose (Cao et al. 2017, "Realtime Multi-Person 2D Pose Estimation using Part Affinity
Fields", https://arxiv.org/abs/1611.08050): a bottom-up pose network.

A VGG-19 trunk (conv1_1 … conv4_2, stride 8) and two convolutions reduce the image to features F.
Stage 1 predicts, in two branches, the part affinity fields L¹ (2 channels per limb) and the part
confidence maps S¹ (one per joint) from F; every later stage t sees concat(F, Lᵗ⁻¹, Sᵗ⁻¹) and
refines both with larger receptive fields (the paper's 7×7 convolutions). Each stage is
supervised (intermediate supervision, eq. 5), so the forward pass returns every stage's output.
Parsing the last stage's maps into people is `cnnkit.ops.paf.parse_people`.

Registered: `openpose_vgg19`, the paper's layout (6 stages, 128-channel branches, VGG-19 trunk
whose `features.*` keys match cnnkit's and torchvision's `vgg19`, so a classification checkpoint
can start it) for the 14 LSP joints and their 13-limb tree (`cnnkit.data.lsp.SKELETON`);
`openpose_small`, a CPU variant (a narrower trunk, 3 stages of three 3×3 convolutions instead of
7×7s, after the 2019 paper's replacement of each 7×7 by three 3×3s,
https://arxiv.org/abs/1812.08008 §3.1, and BatchNorm, which the Caffe model lacks, for training
from scratch); `openpose_resnet18`, those stages on a ResNet-18 trunk that a cnnkit
classifier can start; and `openpose_hrnet`, those stages on the small pose HRNet's trunk.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from cnnkit.data.lsp import SKELETON
from cnnkit.layers import ConvNormAct
from cnnkit.layers.init import init_cnn_
from cnnkit.models._registry import register_model
from cnnkit.models.pose.hrnet import SMALL as HRNET_SMALL
from cnnkit.models.pose.hrnet import HighResolutionTrunk
from cnnkit.models.resnet import resnet18
from cnnkit.models.vgg import _CFGS, make_features
from cnnkit.ops.paf import check_skeleton
from cnnkit.utils import CnnkitError


def _branch(in_channels: int, out_channels: int, width: int, kernel: int, depth: int,
            hidden: int, norm: str | None) -> nn.Sequential:
    """One stage branch: `depth` k×k convs of `width` channels, a 1×1 to `hidden`, a 1×1 out."""
    layers = [ConvNormAct(in_channels if i == 0 else width, width, kernel, norm=norm, act="relu")
              for i in range(depth)]
    layers += [ConvNormAct(width, hidden, 1, norm=norm, act="relu"),
               nn.Conv2d(hidden, out_channels, 1)]
    return nn.Sequential(*layers)


class OpenPose(nn.Module):
    """Images (N, C, H, W) → (fields, maps): (T, N, 2L, H/8, W/8) and (T, N, J, H/8, W/8), one
    entry per stage t = 1..T; the last is the prediction."""
    task = "pose"
    pose = True
    bottom_up = True  # the pose task feeds it whole images, not person crops

    def __init__(self, trunk: tuple[int | str, ...] | str, *, num_joints: int = 14,
                 limbs: list[tuple[int, int]] | None = None, stages: int = 6, width: int = 128,
                 first_depth: int = 3, first_hidden: int = 512, refine_kernel: int = 7,
                 refine_depth: int = 5, norm: str | None = None, in_chans: int = 3):
        super().__init__()
        if norm not in (None, "batchnorm"):  # the VGG trunk has BatchNorm or nothing
            raise CnnkitError(f"OpenPose norm '{norm}': use batchnorm, or None for plain convs")
        self.limbs = [tuple(limb) for limb in (SKELETON if limbs is None else limbs)]
        check_skeleton(self.limbs, num_joints)
        self.num_joints = num_joints
        fields, maps = 2 * len(self.limbs), num_joints
        if trunk == "resnet18":
            self.features, trunk_out = _resnet_trunk(in_chans), 128
        elif trunk == "hrnet":
            self.features = HRNetStride8(HRNET_SMALL, in_chans=in_chans, multi_scale_output=True)
            trunk_out = sum(self.features.out_channels)
        else:
            self.features = make_features(trunk, in_chans, batch_norm=norm == "batchnorm")
            trunk_out = [c for c in trunk if c != "M"][-1]
        # conv4_3_CPM / conv4_4_CPM of the authors' model: bring the trunk down to 128 channels.
        self.reduce = nn.Sequential(ConvNormAct(trunk_out, 2 * width, 3, norm=norm),
                                    ConvNormAct(2 * width, width, 3, norm=norm))
        self.field_stages = nn.ModuleList()
        self.map_stages = nn.ModuleList()
        for t in range(stages):
            if t == 0:
                make = dict(in_channels=width, width=width, kernel=3, depth=first_depth,
                            hidden=first_hidden, norm=norm)
            else:
                make = dict(in_channels=width + fields + maps, width=width, kernel=refine_kernel,
                            depth=refine_depth, hidden=width, norm=norm)
            self.field_stages.append(_branch(out_channels=fields, **make))
            self.map_stages.append(_branch(out_channels=maps, **make))
        init_cnn_(self)  # the ResNet trunk's own init is the same scheme (He, fan_out)
        # Outputs start near zero (the authors' Caffe init draws every conv from N(0, 0.01²)):
        # He-initialised outputs, fed through the next stages, start the loss ~10³× too high.
        for branch in (*self.field_stages, *self.map_stages):
            nn.init.normal_(branch[-1].weight, std=0.01)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.reduce(self.features(x))
        fields, maps = [], []
        stage_in = features
        for field_stage, map_stage in zip(self.field_stages, self.map_stages):
            fields.append(field_stage(stage_in))
            maps.append(map_stage(stage_in))
            stage_in = torch.cat([features, fields[-1], maps[-1]], dim=1)
        return torch.stack(fields), torch.stack(maps)


def _resnet_trunk(in_chans: int) -> nn.Sequential:
    """ResNet-18 up to layer2 (stride 8, 128 channels) under its classification names (conv1,
    bn1, layer1, layer2), so that a cnnkit `resnet18` run's weights load into it."""
    net = resnet18(in_chans=in_chans)
    return nn.Sequential(OrderedDict(
        (name, getattr(net, name)) for name in ("conv1", "bn1", "relu", "maxpool", "layer1",
                                                "layer2")))


class HRNetStride8(HighResolutionTrunk):
    """HRNet's four branches brought to 1/8 of the input and concatenated: the HRNetV2
    representation (Wang et al. 2020, https://arxiv.org/abs/1908.07919, §3), at the stride of
    OpenPose's maps. Any input whose sides are multiples of 8 (whole images at a scale) is padded
    with zeros at the bottom and right to the trunk's multiple of 32 — which moves no pixel — and
    the features are cropped back to H/8 × W/8."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        xs = super().forward(F.pad(x, (0, -w % 32, 0, -h % 32)))  # C·2^b channels at 1/2^(b+2)
        size = xs[1].shape[-2:]
        parts = [F.avg_pool2d(xs[0], 2), xs[1],
                 *(F.interpolate(b, size=size, mode="bilinear", align_corners=False)
                   for b in xs[2:])]
        return torch.cat(parts, dim=1)[..., :h // 8, :w // 8]  # (N, 15·C, H/8, W/8)


def stage_loss(fields: torch.Tensor, maps: torch.Tensor, target_fields: torch.Tensor,
               target_maps: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 5: the squared L2 distance of every stage's fields and maps to the targets, summed
    over stages; `mask` (N, 1, h, w) zeroes pixels whose people are not annotated. Averaged over
    pixels and channels (instead of summed) so that the learning rate does not depend on the
    map size."""
    mask = torch.ones_like(target_maps[:, :1]) if mask is None else mask
    field_err = ((fields - target_fields[None]) ** 2 * mask[None]).mean(dim=(1, 2, 3, 4))
    map_err = ((maps - target_maps[None]) ** 2 * mask[None]).mean(dim=(1, 2, 3, 4))
    return (field_err + map_err).sum()


# --- registered variants ---

# The CPU variants' stages: 3 of 64 channels, three 3×3s per refinement, BatchNorm.
_SMALL = dict(stages=3, width=64, first_hidden=128, refine_kernel=3, refine_depth=3,
              norm="batchnorm")


@register_model(input_size=(3, 368, 368), test_input_size=(3, 64, 64))
def openpose_vgg19(num_joints: int = 14, in_chans: int = 3, **kwargs) -> OpenPose:
    """The 2017 paper's network: VGG-19 conv1_1–conv4_2, 6 stages, 7×7 refinement convs."""
    kwargs.pop("num_classes", None)  # the registry's generic keyword; joints decide the outputs
    return OpenPose(_CFGS["E"][:13], num_joints=num_joints, in_chans=in_chans, **kwargs)


@register_model(input_size=(3, 256, 256), test_input_size=(3, 64, 64))
def openpose_small(num_joints: int = 14, in_chans: int = 3, **kwargs) -> OpenPose:
    """CPU variant: trunk 32-64-128 (stride 8), 3 stages of 64 channels, three 3×3s per
    refinement, BatchNorm after every hidden conv so that it trains from scratch (LSP test
    PCK@0.2 0.607 after 50 min on one core, the parsed person completed from the maps; 0.480
    as assembled, docs/benchmarks.md); `norm=None`: plain convs."""
    kwargs.pop("num_classes", None)
    trunk = (32, "M", 64, 64, "M", 128, 128, "M", 128, 128)
    return OpenPose(trunk, num_joints=num_joints, in_chans=in_chans, **{**_SMALL, **kwargs})


@register_model(input_size=(3, 256, 256), test_input_size=(3, 64, 64))
def openpose_resnet18(num_joints: int = 14, in_chans: int = 3, **kwargs) -> OpenPose:
    """`openpose_small`'s stages on ResNet-18's stem, layer1 and layer2 (stride 8), whose names
    are the classifier's: `cnnkit train --backbone-weights RUN` starts it from a cnnkit
    `resnet18` run — the paper starts its VGG-19 trunk from ImageNet. From a CIFAR-10 run its
    best weights scored LSP test PCK@0.2 0.552 (from scratch 0.505; `openpose_small` 0.605,
    docs/benchmarks.md): worth trying with a classifier of people, not of 32-px objects."""
    kwargs.pop("num_classes", None)
    return OpenPose("resnet18", num_joints=num_joints, in_chans=in_chans, **{**_SMALL, **kwargs})


@register_model(input_size=(3, 256, 256), test_input_size=(3, 64, 64))
def openpose_hrnet(num_joints: int = 14, in_chans: int = 3, **kwargs) -> OpenPose:
    """`openpose_small`'s stages on `pose_hrnet_w16_small`'s trunk, all four branches brought to
    stride 8 and concatenated (240 channels). From scratch on LSP it generalises worse than
    `openpose_small` at the same training loss: test PCK@0.2 0.462, lsp-multi 52% (against
    0.60–0.63 and 75–79%, docs/benchmarks.md)."""
    kwargs.pop("num_classes", None)
    return OpenPose("hrnet", num_joints=num_joints, in_chans=in_chans, **{**_SMALL, **kwargs})
