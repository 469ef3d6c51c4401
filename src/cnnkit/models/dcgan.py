"""DCGAN generator and discriminator (Radford et al. 2016, https://arxiv.org/abs/1511.06434).

Architecture guidelines of the paper (§3): strided convolutions instead of pooling (D) and
fractionally-strided (transposed) convolutions instead of upsampling (G); BatchNorm in both nets
except G's output and D's input layer; ReLU in G with Tanh at the output; LeakyReLU(0.2) in D;
no fully connected hidden layers. Both nets are sized by `img_size` / `channels`: 28×28 grey
(MNIST: 7 → 14 → 28) and 32×32 colour (CIFAR-10: 4 → 8 → 16 → 32) are the designed cases; any
side that halves down to a base of 3..7 pixels works.

Class conditioning (`num_classes > 0`), after Mirza & Osindero 2014
(https://arxiv.org/abs/1411.1784):
G concatenates a learned label embedding to z; D receives the label as one extra input channel,
a learned img_size×img_size "label map" per class concatenated to the image.
"""
from __future__ import annotations

import torch
from torch import nn

from cnnkit.layers import ConvNormAct, get_act, get_norm
from cnnkit.models._registry import register_model
from cnnkit.utils import CnnkitError


def base_side(img_size: int) -> int:
    """The side G starts from and D ends at: halve `img_size` while it stays even and above 7.

    28 → 7 (two ×2 stages), 32 → 4 (three), 64 → 4 (four).
    """
    side = img_size
    while side % 2 == 0 and side > 7:
        side //= 2
    if side == img_size or side < 3:
        raise CnnkitError(f"DCGAN needs an image side that halves down to 3..7 pixels (28, 32, "
                          f"64, ...), got {img_size}")
    return side


class UpConvNormAct(nn.Sequential):
    """ConvTranspose2d 4×4 stride 2 (doubles the side) → norm → activation.

    The transposed twin of `cnnkit.layers.ConvNormAct` (which wraps nn.Conv2d only), with the
    same child names and the same norm/activation resolution (`get_norm`, `get_act`).
    """

    def __init__(self, in_channels: int, out_channels: int, *, norm="batchnorm", act="relu"):
        super().__init__()
        has_norm = norm not in (None, "none")
        self.conv = nn.ConvTranspose2d(in_channels, out_channels, 4, stride=2, padding=1,
                                       bias=not has_norm)  # a following norm cancels any bias
        if has_norm:
            self.bn = get_norm(norm, out_channels)
        self.act = get_act(act)


def init_dcgan_(module: nn.Module) -> None:
    """Paper §4: all weights N(0, 0.02); BatchNorm scale N(1, 0.02) and shift 0 (as in the
    authors' and PyTorch's DCGAN code). Label embeddings keep their N(0, 1) init so that the
    label is as loud as the unit-variance noise it is concatenated to."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class Generator(nn.Module):
    """z (B, nz) [+ labels (B,)] → images (B, channels, img_size, img_size) in [-1, 1].

    project: a transposed conv from 1×1 to base×base (the paper's "project and reshape"),
    then ×2 transposed-conv stages halving the width each time; the last one outputs `channels`
    through Tanh, without BatchNorm.
    """

    generative = True  # not a classifier: the classifier zoo tests skip it

    def __init__(self, nz: int = 100, *, img_size: int = 28, channels: int = 1, ngf: int = 64,
                 num_classes: int = 0, embed_dim: int = 10):
        super().__init__()
        self.nz, self.img_size, self.channels = nz, img_size, channels
        self.num_classes = num_classes
        side = base_side(img_size)
        stages = (img_size // side).bit_length() - 1  # number of ×2 steps: 28 → 2, 32 → 3
        # widths 28: [128, 64]; 32: [256, 128, 64]
        widths = [ngf * 2 ** i for i in reversed(range(stages))]
        self.embed = nn.Embedding(num_classes, embed_dim) if num_classes else None
        in_dim = nz + (embed_dim if num_classes else 0)
        self.project = nn.Sequential(
            # (B, in, 1, 1) → (B, w0, base, base)
            nn.ConvTranspose2d(in_dim, widths[0], side, bias=False),
            get_norm("batchnorm", widths[0]), get_act("relu"))
        self.blocks = nn.Sequential(*[UpConvNormAct(a, b) for a, b in zip(widths, widths[1:])])
        self.to_image = UpConvNormAct(widths[-1], channels, norm="none", act=nn.Tanh)
        init_dcgan_(self)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is not None:
            if labels is None:
                raise CnnkitError("this generator is class-conditional: pass labels")
            z = torch.cat([z, self.embed(labels)], dim=1)  # (B, nz + embed_dim)
        x = self.project(z[:, :, None, None])  # (B, w0, base, base)
        return self.to_image(self.blocks(x))  # (B, channels, img_size, img_size)


class Discriminator(nn.Module):
    """images (B, channels, img_size, img_size) [+ labels (B,)] → real/fake logits (B,).

    Strided 4×4 convs halve the side down to the base (no pooling), LeakyReLU(0.2) throughout,
    BatchNorm on every conv but the first; a final base×base conv gives one logit (no sigmoid:
    the loss is BCE-with-logits, numerically safer than sigmoid + BCE).
    """

    generative = True

    def __init__(self, *, img_size: int = 28, channels: int = 1, ndf: int = 64,
                 num_classes: int = 0):
        super().__init__()
        self.img_size, self.channels, self.num_classes = img_size, channels, num_classes
        side = base_side(img_size)
        stages = (img_size // side).bit_length() - 1
        widths = [ndf * 2 ** i for i in range(stages)]  # 28: [64, 128]; 32: [64, 128, 256]
        # One learned label map per class, concatenated to the image as an extra channel.
        self.label_map = nn.Embedding(num_classes, img_size * img_size) if num_classes else None
        in_chans = channels + (1 if num_classes else 0)
        layers = []
        for i, width in enumerate(widths):
            layers.append(ConvNormAct(in_chans, width, 4, stride=2, padding=1,
                                      norm="none" if i == 0 else "batchnorm", act="leaky_relu"))
            in_chans = width
        self.blocks = nn.Sequential(*layers)
        self.head = nn.Conv2d(widths[-1], 1, side)  # (B, w, base, base) → (B, 1, 1, 1)
        init_dcgan_(self)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.label_map is not None:
            if labels is None:
                raise CnnkitError("this discriminator is class-conditional: pass labels")
            maps = self.label_map(labels).view(-1, 1, self.img_size, self.img_size)  # (B, 1, H, W)
            x = torch.cat([x, maps.to(x.dtype)], dim=1)  # (B, C + 1, H, W)
        return self.head(self.blocks(x)).flatten()  # (B,)


# --- registered variants (the GAN pair; `cnnkit gan train` builds them from its config) ---

@register_model(input_size=(100,), test_kwargs={"img_size": 28})
def dcgan_generator(**kwargs) -> Generator:
    """z (B, 100) → 28×28 grey images (MNIST); `img_size`, `channels`, `ngf` resize it."""
    return Generator(**kwargs)


@register_model(input_size=(1, 28, 28), test_kwargs={"img_size": 28})
def dcgan_discriminator(**kwargs) -> Discriminator:
    """28×28 grey images → one real/fake logit each; `img_size`, `channels`, `ndf` resize it."""
    return Discriminator(**kwargs)
