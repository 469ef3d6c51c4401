"""CycleGAN's networks (Zhu et al. 2017, https://arxiv.org/abs/1703.10593): the ResNet generator and
the 70×70 PatchGAN discriminator, layer for layer as in the authors' implementation
(junyanz/pytorch-CycleGAN-and-pix2pix, models/networks.py: ResnetGenerator, NLayerDiscriminator).

Generator (paper appendix 7.2, after Johnson et al. 2016): c7s1-64, d128, d256, R256 × 6 or 9,
u128, u64, c7s1-3. Instance normalisation without affine parameters (Ulyanov et al. 2016),
convolutions with bias (the authors keep the bias when the norm is InstanceNorm), reflection padding
around the 7×7 and residual convolutions, zero padding in the stride-2 ones, Tanh output in [-1, 1].
Discriminator: C64-C128-C256-C512 4×4 convolutions, LeakyReLU(0.2), no norm on the first, stride 2
on the first three and 1 on the fourth, then a 4×4 conv to one logit per 70×70 input patch.
At the paper's widths the counts equal the authors': 11,378,179 (9 blocks), 7,837,699 (6 blocks)
and 2,764,737 (PatchGAN). Weights start N(0, 0.02), biases 0 (the authors' `init_weights`).
"""
from __future__ import annotations

import torch
from torch import nn

from cnnkit.layers import ConvNormAct, get_act, get_norm
from cnnkit.models._registry import register_model
from cnnkit.utils import CnnkitError

NORM = "instancenorm"  # nn.InstanceNorm2d: affine=False, track_running_stats=False, as the authors'


def init_cyclegan_(module: nn.Module) -> None:
    """The authors' `init_weights(init_type='normal', gain=0.02)`: conv weights N(0, 0.02),
    biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def reflect_conv(in_channels: int, out_channels: int, kernel_size: int, *, norm=NORM,
                 act="relu") -> nn.Sequential:
    """ReflectionPad2d(k // 2) → ConvNormAct without zero padding: the generator's "c7s1" and
    residual convolutions. Reflection keeps border statistics natural (paper §4, after Johnson et
    al.), where zero padding would leave dark frame artefacts."""
    return nn.Sequential(nn.ReflectionPad2d(kernel_size // 2),
                         ConvNormAct(in_channels, out_channels, kernel_size, padding=0, bias=True,
                                     norm=norm, act=act))


UPSAMPLING = ("transpose", "resize")


class UpConvNormAct(nn.Sequential):
    """"uk": ConvTranspose2d 3×3 stride 2, padding 1, output_padding 1 (exactly doubles the side)
    → InstanceNorm → ReLU; children named like ConvNormAct's.

    `upsample="resize"`: nearest-neighbour doubling, then a 3×3 convolution with the same
    parameter count — Odena et al. 2016 ("Deconvolution and Checkerboard Artifacts"): a stride-2
    transposed convolution's kernels overlap unevenly, which paints a checkerboard that training
    must learn to cancel; resizing first spreads every input pixel evenly. The convolution then
    runs at the doubled side: four times the layer's multiply-adds."""

    def __init__(self, in_channels: int, out_channels: int, *, norm=NORM, act="relu",
                 upsample: str = "transpose"):
        super().__init__()
        if upsample not in UPSAMPLING:
            raise CnnkitError(f"unknown upsampling {upsample!r}: choose from "
                              f"{', '.join(UPSAMPLING)}")
        if upsample == "resize":
            self.resize = nn.Upsample(scale_factor=2, mode="nearest")
            self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=True)
        else:
            self.conv = nn.ConvTranspose2d(in_channels, out_channels, 3, stride=2, padding=1,
                                           output_padding=1, bias=True)
        self.bn = get_norm(norm, out_channels)
        self.act = get_act(act)


class ResnetBlock(nn.Module):
    """"Rk": x + (reflect-pad, 3×3 conv, IN, ReLU, reflect-pad, 3×3 conv, IN)(x); no ReLU after the
    sum (the authors' ResnetBlock; CycleGAN uses no dropout)."""

    def __init__(self, channels: int, *, norm=NORM):
        super().__init__()
        self.block = nn.Sequential(reflect_conv(channels, channels, 3, norm=norm),
                                   reflect_conv(channels, channels, 3, norm=norm, act="none"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class ResnetGenerator(nn.Module):
    """images (B, in_chans, H, W) → translated images (B, out_chans, H, W) in [-1, 1].

    H and W must be multiples of 4 (two stride-2 downsamplings, then two exact doublings).
    `ngf`: channels of the first and last hidden layers (64 in the paper); `n_blocks`: residual
    blocks at 1/4 resolution (6 for 128×128 training images, 9 for 256×256 in the paper);
    `upsample`: "transpose" (the paper's fractionally strided convolutions) or "resize" (see
    UpConvNormAct; same parameter count).
    """

    generative = True  # not a classifier: the classifier zoo tests skip it

    def __init__(self, *, in_chans: int = 3, out_chans: int = 3, ngf: int = 64, n_blocks: int = 9,
                 norm=NORM, upsample: str = "transpose"):
        super().__init__()
        if ngf < 1 or n_blocks < 0:
            raise CnnkitError(f"ResnetGenerator needs ngf ≥ 1 and n_blocks ≥ 0, got ngf={ngf}, "
                              f"n_blocks={n_blocks}")
        self.in_chans, self.out_chans, self.ngf, self.n_blocks = in_chans, out_chans, ngf, n_blocks
        self.stem = reflect_conv(in_chans, ngf, 7, norm=norm)  # c7s1-64
        self.down = nn.Sequential(  # d128, d256: stride-2 3×3 convs with zero padding 1
            ConvNormAct(ngf, 2 * ngf, 3, stride=2, padding=1, bias=True, norm=norm),
            ConvNormAct(2 * ngf, 4 * ngf, 3, stride=2, padding=1, bias=True, norm=norm))
        self.blocks = nn.Sequential(*[ResnetBlock(4 * ngf, norm=norm) for _ in range(n_blocks)])
        self.up = nn.Sequential(UpConvNormAct(4 * ngf, 2 * ngf, norm=norm, upsample=upsample),
                                UpConvNormAct(2 * ngf, ngf, norm=norm, upsample=upsample))
        # c7s1-3: the last conv has a bias and no norm; Tanh matches images scaled to [-1, 1].
        self.head = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_chans, 7),
                                  nn.Tanh())
        init_cyclegan_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 4 or x.shape[-2] % 4:
            raise CnnkitError(f"the CycleGAN generator needs image sides that are multiples of "
                              f"4, got {x.shape[-2]}×{x.shape[-1]}")
        x = self.down(self.stem(x))  # (B, 4·ngf, H/4, W/4)
        return self.head(self.up(self.blocks(x)))  # (B, out_chans, H, W)


def patch_side(size: int, n_layers: int = 3) -> int:
    """Side of the discriminator's logit map for a `size`-pixel input: `n_layers` stride-2 4×4
    convs (the last of them stride 1), then the 4×4 head; each conv pads by 1."""
    for _ in range(n_layers):
        size = size // 2  # (s + 2 - 4) // 2 + 1
    return size - 2  # two stride-1 4×4 convs with padding 1 each take one pixel


class PatchDiscriminator(nn.Module):
    """images (B, in_chans, H, W) → real/fake logits (B, 1, H', W'), one per overlapping patch.

    With n_layers = 3 each logit sees a 70×70 input patch (paper §4, after Isola et al. 2017):
    such a patch-level discriminator has fewer parameters than a full-image one and works on
    images of any size. No sigmoid: the LSGAN loss regresses the raw outputs onto 1 and 0.
    """

    generative = True

    def __init__(self, *, in_chans: int = 3, ndf: int = 64, n_layers: int = 3, norm=NORM):
        super().__init__()
        if ndf < 1 or n_layers < 1:
            raise CnnkitError(f"PatchDiscriminator needs ndf ≥ 1 and n_layers ≥ 1, got ndf={ndf}, "
                              f"n_layers={n_layers}")
        self.in_chans, self.ndf, self.n_layers = in_chans, ndf, n_layers
        # C64 has no norm (as in DCGAN, normalising the input layer hurts).
        layers = [ConvNormAct(in_chans, ndf, 4, stride=2, padding=1, bias=True, norm="none",
                              act="leaky_relu")]
        mult = 1
        # C128, C256 (stride 2), C512 (stride 1); the width stops growing at 8·ndf
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            layers.append(ConvNormAct(ndf * prev, ndf * mult, 4, stride=2 if n < n_layers else 1,
                                      padding=1, bias=True, norm=norm, act="leaky_relu"))
        self.features = nn.Sequential(*layers)
        self.head = nn.Conv2d(ndf * mult, 1, 4, padding=1)
        init_cyclegan_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if min(patch_side(x.shape[-2], self.n_layers), patch_side(x.shape[-1], self.n_layers)) < 1:
            raise CnnkitError(f"a {self.n_layers}-layer PatchGAN needs larger images than "
                              f"{x.shape[-2]}×{x.shape[-1]} (no logit would remain)")
        return self.head(self.features(x))  # (B, 1, H', W')


# --- registered variants (`cnnkit cyclegan train` builds them from its config) ---
# `num_classes` is accepted and ignored: the registry-wide tests pass it to every builder.

@register_model(input_size=(3, 256, 256), test_input_size=(3, 32, 32), test_kwargs={"ngf": 8})
def cyclegan_resnet_9blocks(num_classes: int | None = None, **kwargs) -> ResnetGenerator:
    """The paper's generator for 256×256 images: 9 residual blocks, 11,378,179 parameters."""
    return ResnetGenerator(**{"n_blocks": 9, **kwargs})


@register_model(input_size=(3, 128, 128), test_input_size=(3, 32, 32), test_kwargs={"ngf": 8})
def cyclegan_resnet_6blocks(num_classes: int | None = None, **kwargs) -> ResnetGenerator:
    """The paper's generator for 128×128 images: 6 residual blocks, 7,837,699 parameters."""
    return ResnetGenerator(**{"n_blocks": 6, **kwargs})


@register_model(input_size=(3, 256, 256), test_input_size=(3, 32, 32), test_kwargs={"ndf": 8})
def patchgan_70(num_classes: int | None = None, **kwargs) -> PatchDiscriminator:
    """The 70×70 PatchGAN (3 strided layers): 2,764,737 parameters at ndf = 64."""
    return PatchDiscriminator(**{"n_layers": 3, **kwargs})
