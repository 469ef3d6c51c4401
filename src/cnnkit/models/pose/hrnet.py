"""HRNet for top-down human pose estimation, in the official code's layout.

Sun, Xiao, Liu & Wang 2019, "Deep High-Resolution Representation Learning for Human Pose
Estimation", https://arxiv.org/abs/1902.09212; reference code leoxiaobin/deep-high-resolution-net
.pytorch (`lib/models/pose_hrnet.py`), whose parameter names this file keeps, so its checkpoints
load strictly: `conv1/bn1/conv2/bn2` (stem), `layer1` (4 bottlenecks), `transition1..3`,
`stage2..4` (each a sequence of `HighResolutionModule`s with `branches` and `fuse_layers`) and
`final_layer`.

The network never leaves high resolution: after a stride-4 stem, stage k runs k parallel branches
at 1/4, 1/8, 1/16, 1/32 of the input (width C, 2C, 4C, 8C) and every module ends with a fusion in
which each output branch sums all the input branches, brought to its resolution by strided 3×3
convs (down) or a 1×1 conv + nearest upsampling (up) (paper §3, Fig. 3). Only the 1/4 branch of
the last module is kept; a 1×1 conv turns it into one heatmap per joint.

Input (N, 3, H, W) with H, W divisible by 32 (256×192 as published) → heatmaps (N, J, H/4, W/4).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cnnkit.layers import ConvNormAct
from cnnkit.models._registry import register_model
from cnnkit.models.resnet import BasicBlock, Bottleneck, make_stage
from cnnkit.utils import CnnkitError

# Children named as the official nn.Sequential(conv, bn, relu) ones: `0`, `1`, `2`.
_SEQ = ("0", "1", "2")


@dataclass(frozen=True)
class HRNetConfig:
    """One HRNet: the official YAML's MODEL.EXTRA, reduced to what differs between variants."""

    width: int = 32  # C: channels of the 1/4 branch; branch b has C·2^b (w32: 32, 64, 128, 256)
    stem_blocks: int = 4  # bottlenecks of layer1 (stage 1)
    num_modules: tuple[int, int, int] = (1, 4, 3)  # HighResolutionModules of stages 2, 3, 4
    num_blocks: int = 4  # BasicBlocks per branch in every module
    final_conv_kernel: int = 1  # EXTRA.FINAL_CONV_KERNEL of the COCO configs


class HighResolutionModule(nn.Module):
    """Parallel branches of BasicBlocks, then the multi-resolution fusion (paper §3 "Repeated
    multi-scale fusion"). `multi_scale_output=False` (the network's last module) fuses into the
    1/4 branch only, as the official code does, so `fuse_layers` has a single row."""

    def __init__(self, channels: tuple[int, ...], num_blocks: int, multi_scale_output: bool = True):
        super().__init__()
        self.num_branches = len(channels)
        self.branches = nn.ModuleList(
            make_stage(BasicBlock, c, c, num_blocks, 1, 1, 64) for c in channels)
        self.fuse_layers = nn.ModuleList()
        if self.num_branches == 1:
            return
        for i in range(self.num_branches if multi_scale_output else 1):
            row = nn.ModuleList()
            for j in range(self.num_branches):
                row.append(_fuse(channels[j], channels[i], j - i))
            self.fuse_layers.append(row)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs)]
        if self.num_branches == 1:
            return xs
        # Output i = ReLU(Σ_j f_ij(x_j)), f_ii the identity: every resolution informs every other.
        return [self.relu(sum(f(x) for f, x in zip(row, xs))) for row in self.fuse_layers]


def _fuse(c_in: int, c_out: int, steps: int) -> nn.Module:
    """Branch j → branch i, `steps` = j − i halvings of resolution apart.

    Up (steps > 0): 1×1 conv + BN to match channels, then nearest ×2^steps. Down (steps < 0):
    |steps| strided 3×3 conv + BN, with ReLU between them and the channel change at the last
    (paper Fig. 3; strided convs rather than pooling so that no information is thrown away)."""
    if steps == 0:
        return nn.Identity()  # the official None: no parameters, no key
    if steps > 0:
        up = ConvNormAct(c_in, c_out, 1, act=None, names=_SEQ)
        up.add_module("2", nn.Upsample(scale_factor=2 ** steps, mode="nearest"))
        return up
    downs = [ConvNormAct(c_in, c_in, 3, stride=2, act="relu", names=_SEQ)
             for _ in range(-steps - 1)]
    downs.append(ConvNormAct(c_in, c_out, 3, stride=2, act=None, names=_SEQ))
    return nn.Sequential(*downs)


def _transition(c_prev: tuple[int, ...], c_next: tuple[int, ...]) -> nn.ModuleList:
    """Between stages: keep the existing branches (a 3×3 conv where the width changes) and open
    the new, lower-resolution branch from the lowest existing one with a strided 3×3 conv."""
    layers = nn.ModuleList()
    for i, c in enumerate(c_next):
        if i < len(c_prev):
            layers.append(nn.Identity() if c == c_prev[i] else
                          ConvNormAct(c_prev[i], c, 3, act="relu", names=_SEQ))
        else:
            steps = i + 1 - len(c_prev)  # 1 in every published configuration
            layers.append(nn.Sequential(*[
                ConvNormAct(c_prev[-1], c if k == steps - 1 else c_prev[-1], 3, stride=2,
                            act="relu", names=_SEQ) for k in range(steps)]))
    return layers


class HighResolutionTrunk(nn.Module):
    """Stem (two stride-2 3×3 convs) → layer1 → stages 2-4 with transitions: images (N, C, H, W)
    → the last module's branches, [(N, C, H/4, W/4)] or, with `multi_scale_output=True` (the
    HRNetV2 representation, Wang et al. 2020, https://arxiv.org/abs/1908.07919), all four
    (C·2^b channels at H/2^(b+2)). The pose network adds its heatmap head; OpenPose's
    `openpose_hrnet` reads all four branches."""

    def __init__(self, cfg: HRNetConfig = HRNetConfig(), *, in_chans: int = 3,
                 multi_scale_output: bool = False):
        super().__init__()
        self.in_chans, self.cfg = in_chans, cfg
        self.conv1 = nn.Conv2d(in_chans, 64, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)  # momentum 0.1, the official BN_MOMENTUM
        self.conv2 = nn.Conv2d(64, 64, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        # Stage 1: 4 ResNet-50 bottlenecks of width 64 at 1/4 (paper, "Network instantiation"),
        # widening to 256 channels.
        self.layer1 = make_stage(Bottleneck, 64, 64, cfg.stem_blocks, 1, 1, 64)
        channels = (64 * Bottleneck.expansion,)
        for s, modules in enumerate(cfg.num_modules, start=2):
            branches = tuple(cfg.width * 2 ** b for b in range(s))  # (C, 2C, ..., C·2^(s-1))
            self.add_module(f"transition{s - 1}", _transition(channels, branches))
            last = s == 1 + len(cfg.num_modules)
            self.add_module(f"stage{s}", nn.Sequential(*[
                HighResolutionModule(branches, cfg.num_blocks, multi_scale_output=(
                    multi_scale_output or not (last and m == modules - 1)))
                for m in range(modules)]))
            channels = branches
        self.out_channels = channels if multi_scale_output else channels[:1]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h, w = x.shape[-2:]
        if h % 32 or w % 32:  # the 1/32 branch must upsample back to exactly 1/4
            raise CnnkitError(f"pose_hrnet needs an input whose height and width are multiples "
                              f"of 32 (256×192 as published), got {h}×{w}")
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer1(self.relu(self.bn2(self.conv2(x))))  # (N, 256, H/4, W/4)
        xs = [x]
        for s in range(2, 2 + len(self.cfg.num_modules)):
            transition = getattr(self, f"transition{s - 1}")
            # Existing branches pass (or change width); the new one starts from the lowest.
            xs = [t(xs[min(i, len(xs) - 1)]) for i, t in enumerate(transition)]
            xs = getattr(self, f"stage{s}")(xs)
        return xs


class PoseHighResolutionNet(HighResolutionTrunk):
    """The trunk's 1/4 branch → 1×1 heatmap head: `num_joints` heatmaps at 1/4 of the input.

    `num_classes` is taken as a synonym, since the registry-wide tools pass it to every model.
    Attributes `task = "pose"`, `pose = True`.
    """

    task = "pose"
    pose = True

    def __init__(self, cfg: HRNetConfig = HRNetConfig(), *, num_joints: int | None = None,
                 num_classes: int | None = None, in_chans: int = 3):
        super().__init__(cfg, in_chans=in_chans)
        if num_joints is not None and num_classes is not None and num_joints != num_classes:
            raise CnnkitError(f"pose_hrnet: num_joints={num_joints} and num_classes="
                              f"{num_classes} disagree; give one of them")
        self.num_joints = num_joints or num_classes or 17  # 17: COCO, the official default
        k = cfg.final_conv_kernel
        self.final_layer = nn.Conv2d(cfg.width, self.num_joints, k, padding=(k - 1) // 2)
        self._init_weights()

    def _init_weights(self) -> None:
        # The official init_weights: N(0, 0.001²) convs, BN at identity, zero conv biases; small
        # weights make the initial heatmaps ≈ 0, the value of most of every target.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.001)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final_layer(super().forward(x)[0])  # (N, J, H/4, W/4)


def _build_hrnet(cfg: HRNetConfig, **kwargs) -> PoseHighResolutionNet:
    return PoseHighResolutionNet(cfg, **kwargs)


# --- registered variants (official COCO 256×192 configurations; w16_small for the CPU) ---
_POSE = {"input_size": (3, 256, 192), "test_input_size": (3, 128, 96)}


@register_model(**_POSE)
def pose_hrnet_w32(**kwargs) -> PoseHighResolutionNet:
    return _build_hrnet(HRNetConfig(width=32), **kwargs)


@register_model(**_POSE)
def pose_hrnet_w48(**kwargs) -> PoseHighResolutionNet:
    return _build_hrnet(HRNetConfig(width=48), **kwargs)


# The CPU variant: width 16, one bottleneck in stage 1, one module of one block per branch.
SMALL = HRNetConfig(width=16, stem_blocks=1, num_modules=(1, 1, 1), num_blocks=1)


@register_model(**_POSE)
def pose_hrnet_w16_small(**kwargs) -> PoseHighResolutionNet:
    return _build_hrnet(SMALL, **kwargs)
