"""Pieces the vision transformers share: the MLP, patch embedding, fused-qkv attention, init.

ViT and Swin follow torchvision's module names, ConViT follows timm's; `Mlp` takes its child names
as an argument, as `ConvNormAct` does, so one implementation serves both checkpoint layouts.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cnnkit.utils import CnnkitError

# torchvision's `ops.misc.MLP` is a plain Sequential: Linear, GELU, Dropout, Linear, Dropout.
TORCHVISION_MLP_NAMES = ("0", "1", "2", "3", "4")


class Mlp(nn.Sequential):
    """Linear → GELU → Dropout → Linear → Dropout: the transformer feed-forward block.

    Children are `fc1`, `act`, `drop1`, `fc2`, `drop2` (timm's `Mlp`); torchvision-layout models
    pass `names=TORCHVISION_MLP_NAMES`, which makes the linear layers `0` and `3`.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int | None = None, *,
                 drop: float = 0.0, names: tuple[str, ...] = ("fc1", "act", "drop1", "fc2", "drop2")):
        super().__init__()
        layers = (nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Dropout(drop),
                  nn.Linear(hidden_dim, out_dim or in_dim), nn.Dropout(drop))
        for name, layer in zip(names, layers, strict=True):
            self.add_module(name, layer)


def check_image_size(x: torch.Tensor, img_size: int, model: str) -> None:
    """Models with a learned position embedding accept only the size they were built for."""
    if tuple(x.shape[-2:]) != (img_size, img_size):
        h, w = x.shape[-2:]
        raise CnnkitError(f"{model} was built for {img_size}×{img_size} images, got {h}×{w}; "
                          f"build it with img_size={h} (and a patch_size that divides it)")


class PatchEmbed(nn.Module):
    """Non-overlapping patches → tokens: a conv with kernel = stride = patch size (timm's `proj`).

    Dosovitskiy et al. 2020 (https://arxiv.org/abs/2010.11929), section 3.1: the linear projection
    of flattened patches is exactly this strided conv.
    """

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        if img_size % patch_size:
            raise CnnkitError(f"patch_size {patch_size} does not divide img_size {img_size}; "
                              "choose a patch_size that divides the image side")
        self.img_size, self.patch_size = img_size, patch_size
        self.grid_size = img_size // patch_size
        self.num_patches = self.grid_size ** 2
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (N, D, g, g) → (N, g*g, D)


class MultiheadSelfAttention(nn.Module):
    """Multi-head self-attention with one fused `qkv` projection and an output `proj` (timm layout).

    Runs on `F.scaled_dot_product_attention`. `x` is (..., N, C): Swin passes (B, windows, N, C),
    which keeps the image batch first for `cnnkit summary`'s per-image counts. The leading dims are
    flattened to one for the SDPA call, and `attn_bias` (added to the scaled scores before the
    softmax) must be 4-D, broadcasting against (B·windows, heads, N, N): on CPU a 3-D mask or 5-D
    inputs fall back to the unfused kernel, 2–3× slower (measured with torch 2.13).
    """

    def __init__(self, dim: int, num_heads: int, *, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None = None) -> torch.Tensor:
        *lead, N, C = x.shape
        qkv = self.qkv(x).reshape(-1, N, 3, self.num_heads, self.head_dim)  # (B', N, 3, h, d)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 × (B', h, N, d)
        if attn_bias is not None:  # under autocast q is bf16/fp16 while a bias table stays fp32
            attn_bias = attn_bias.to(q.dtype)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias,
                                           dropout_p=self.attn_drop if self.training else 0.0)
        x = x.transpose(1, 2).reshape(*lead, N, C)  # (B', h, N, d) → (..., N, h*d)
        return self.proj_drop(self.proj(x))


def init_trunc_normal_(module: nn.Module, std: float = 0.02) -> None:
    """timm's `_init_weights` (also torchvision Swin's loop): every Linear ~ trunc_normal(0, std)
    with zero bias, every LayerNorm weight 1 and bias 0. Convs keep PyTorch's default init."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


__all__ = ["Mlp", "TORCHVISION_MLP_NAMES", "PatchEmbed", "MultiheadSelfAttention",
           "check_image_size", "init_trunc_normal_"]
