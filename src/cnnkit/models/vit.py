"""Vision Transformer: ViT-B/16, ViT-B/32, ViT-L/16.

Dosovitskiy et al. 2020, "An Image is Worth 16x16 Words: Transformers for Image Recognition at
Scale", https://arxiv.org/abs/2010.11929. Pre-norm encoder blocks, a learned class token and a
learned 1-D position embedding, classification from the class token.

The module names follow torchvision (`conv_proj`, `class_token`, `encoder.pos_embedding`,
`encoder.layers.encoder_layer_N.{ln_1, self_attention, ln_2, mlp.0, mlp.3}`, `encoder.ln`,
`heads.head`), so a torchvision checkpoint loads strictly.

Small images: the position embedding has one row per patch, so the input size is fixed when the
model is built, through `img_size` and `patch_size`. `small_input=True` changes their defaults to
32 and 4 (an 8×8 grid of 4×4 patches for CIFAR); MNIST takes `small_input=True, img_size=28`
(a 7×7 grid). Explicit `img_size` / `patch_size` always win.
"""
from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import nn

from cnnkit.layers import TORCHVISION_MLP_NAMES, Mlp, check_image_size
from cnnkit.models._registry import register_model
from cnnkit.utils import CnnkitError


class EncoderBlock(nn.Module):
    """x + MHSA(LN(x)), then x + MLP(LN(x)) (the paper's eq. 2–3, pre-norm)."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, dropout: float,
                 attention_dropout: float):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=1e-6)
        # nn.MultiheadAttention is torchvision's module (keys in_proj_weight/in_proj_bias/out_proj);
        # with need_weights=False it runs on F.scaled_dot_product_attention.
        self.self_attention = nn.MultiheadAttention(dim, num_heads, dropout=attention_dropout,
                                                    batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.ln_2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, mlp_dim, drop=dropout, names=TORCHVISION_MLP_NAMES)
        for m in self.mlp.modules():  # torchvision MLPBlock: xavier_uniform weights, N(0, 1e-6) bias
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.normal_(m.bias, std=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, L, D)
        y = self.ln_1(x)
        y, _ = self.self_attention(y, y, y, need_weights=False)
        x = x + self.dropout(y)
        return x + self.mlp(self.ln_2(x))


class Encoder(nn.Module):
    """Position embedding → dropout → encoder blocks → final LayerNorm."""

    def __init__(self, seq_length: int, num_layers: int, num_heads: int, dim: int, mlp_dim: int,
                 dropout: float, attention_dropout: float):
        super().__init__()
        # N(0, 0.02) as in BERT, which torchvision follows
        self.pos_embedding = nn.Parameter(torch.empty(1, seq_length, dim).normal_(std=0.02))
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.Sequential(OrderedDict(
            (f"encoder_layer_{i}", EncoderBlock(dim, num_heads, mlp_dim, dropout, attention_dropout))
            for i in range(num_layers)))
        self.ln = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, L, D)
        return self.ln(self.layers(self.dropout(x + self.pos_embedding)))


class VisionTransformer(nn.Module):
    """Patchify (strided conv) → prepend class token → encoder → linear head on the class token."""

    def __init__(self, *, num_layers: int, num_heads: int, hidden_dim: int, mlp_dim: int,
                 img_size: int = 224, patch_size: int = 16, num_classes: int = 1000,
                 in_chans: int = 3, dropout: float = 0.0, attention_dropout: float = 0.0):
        super().__init__()
        if img_size % patch_size:
            raise CnnkitError(f"patch_size {patch_size} does not divide img_size {img_size}; "
                              "choose a patch_size that divides the image side")
        self.num_classes, self.in_chans = num_classes, in_chans
        self.img_size, self.patch_size, self.hidden_dim = img_size, patch_size, hidden_dim
        self.conv_proj = nn.Conv2d(in_chans, hidden_dim, kernel_size=patch_size, stride=patch_size)
        self.class_token = nn.Parameter(torch.zeros(1, 1, hidden_dim))
        seq_length = (img_size // patch_size) ** 2 + 1  # patches + class token
        self.encoder = Encoder(seq_length, num_layers, num_heads, hidden_dim, mlp_dim, dropout,
                               attention_dropout)
        self.heads = nn.Sequential(OrderedDict(head=nn.Linear(hidden_dim, num_classes)))

        # torchvision's init: LeCun-normal patch projection, zero head (so training starts from
        # uniform predictions); the attention keeps nn.MultiheadAttention's xavier init.
        fan_in = in_chans * patch_size * patch_size
        nn.init.trunc_normal_(self.conv_proj.weight, std=math.sqrt(1 / fan_in))
        nn.init.zeros_(self.conv_proj.bias)
        nn.init.zeros_(self.heads.head.weight)
        nn.init.zeros_(self.heads.head.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (N, C, H, W) → encoded tokens (N, 1 + patches, D), the class token first."""
        check_image_size(x, self.img_size, f"this ViT (patch {self.patch_size})")
        x = self.conv_proj(x).flatten(2).transpose(1, 2)  # (N, D, h, w) → (N, h*w, D)
        cls = self.class_token.expand(x.shape[0], -1, -1)  # (N, 1, D)
        return self.encoder(torch.cat([cls, x], dim=1))  # (N, 1 + h*w, D)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.heads(x[:, 0])  # the class token is the image representation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _build_vit(num_classes: int, in_chans: int, patch: int, *, depth: int, heads: int, dim: int,
               mlp: int, small_input: bool = False, img_size: int | None = None,
               patch_size: int | None = None, **kwargs) -> VisionTransformer:
    """`patch` is the variant's patch size; the user's `patch_size` / `small_input` override it."""
    img_size = img_size or (32 if small_input else 224)
    patch_size = patch_size or (4 if small_input else patch)
    return VisionTransformer(num_layers=depth, num_heads=heads, hidden_dim=dim, mlp_dim=mlp,
                             img_size=img_size, patch_size=patch_size, num_classes=num_classes,
                             in_chans=in_chans, **kwargs)


# The registry-wide tests use 32×32 images cut into a 4×4 grid of 8×8 patches: 17 tokens.
_TEST = dict(fixed_input_size=True, test_input_size=(3, 32, 32),
             test_kwargs={"img_size": 32, "patch_size": 8})


@register_model(**_TEST)
def vit_b_16(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> VisionTransformer:
    return _build_vit(num_classes, in_chans, 16, depth=12, heads=12, dim=768, mlp=3072, **kwargs)


@register_model(**_TEST)
def vit_b_32(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> VisionTransformer:
    return _build_vit(num_classes, in_chans, 32, depth=12, heads=12, dim=768, mlp=3072, **kwargs)


@register_model(**_TEST)
def vit_l_16(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> VisionTransformer:
    return _build_vit(num_classes, in_chans, 16, depth=24, heads=16, dim=1024, mlp=4096, **kwargs)
