"""Swin Transformer (v1): Swin-T, Swin-S, Swin-B.

Liu et al. 2021, "Swin Transformer: Hierarchical Vision Transformer using Shifted Windows",
https://arxiv.org/abs/2103.14030. Self-attention inside non-overlapping windows, with every second
block shifting the windows by half a window so information crosses window borders; a learned
relative-position bias per head; patch merging halves the resolution between the four stages.

The module names follow torchvision (`features.0` patch embedding, `features.{1,3,5,7}` stages of
`SwinTransformerBlock`s, `features.{2,4,6}` `PatchMerging`, `norm`, `head`), so a torchvision
checkpoint loads strictly. One deliberate difference: where a feature map is smaller than the
window (with the default 7×7 window: the last stage of inputs below 224×224), the window shrinks
to the map, as in the original code and timm, instead of torchvision's zero padding up to the
window. Wherever no map is smaller than the window (224×224, 232, 256, ...) the outputs equal
torchvision's.

Small images: `patch_size` and `window_size` are keywords; `small_input=True` makes them 2 and 4,
so a 32×32 image gives stages of 16×16, 8×8, 4×4 and 2×2 tokens (28×28 MNIST: 14, 7, 4, 2).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cnnkit.layers import (TORCHVISION_MLP_NAMES, DropPath, Mlp, MultiheadSelfAttention,
                           init_trunc_normal_)
from cnnkit.models._registry import register_model

# torchvision's value for masked-out scores (not -inf): exp(-100) is zero in float32 softmax.
_MASKED = -100.0


def relative_position_index(window: tuple[int, int], table_window: tuple[int, int]) -> torch.Tensor:
    """For every (query, key) pair of a `window`, the row of the relative-position bias table.

    The table has (2·Th − 1)·(2·Tw − 1) rows, one per offset a `table_window` can hold; a smaller
    window uses a subset of them. Returns a flat (Wh·Ww·Wh·Ww,) index, as torchvision stores it.
    """
    (wh, ww), (th, tw) = window, table_window
    coords = torch.stack(torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij"))
    coords = coords.flatten(1)  # (2, N): row and column of each token
    offset = coords[:, :, None] - coords[:, None, :]  # (2, N, N): query minus key
    return ((offset[0] + th - 1) * (2 * tw - 1) + offset[1] + tw - 1).flatten()  # (N*N,)


def shifted_window_mask(height: int, width: int, window: tuple[int, int], shift: tuple[int, int],
                        device=None) -> torch.Tensor:
    """Additive mask (windows, N, N) that stops tokens brought together by the cyclic shift — which
    were not neighbours in the image — from attending to each other (the paper's section 3.2)."""
    region = torch.zeros(height, width, device=device)
    slices = [((0, -w), (-w, -s), (-s, None)) for w, s in zip(window, shift)]
    for i, (h0, h1) in enumerate(slices[0]):
        for j, (w0, w1) in enumerate(slices[1]):
            region[h0:h1, w0:w1] = 3 * i + j  # a label per region of the shifted map
    region = region.view(height // window[0], window[0], width // window[1], window[1])
    region = region.transpose(1, 2).reshape(-1, window[0] * window[1])  # (windows, N)
    different = region[:, :, None] != region[:, None, :]  # (windows, N, N)
    return torch.zeros(different.shape, device=device).masked_fill_(different, _MASKED)


class PatchMerging(nn.Module):
    """Concatenate each 2×2 neighbourhood (4C) → LayerNorm → linear to 2C: halves H and W."""

    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, H, W, C)
        x = F.pad(x, (0, 0, 0, x.shape[2] % 2, 0, x.shape[1] % 2))  # odd sides → even
        # torchvision's order of the four neighbours, which the pretrained reduction expects
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x))  # (B, H/2, W/2, 4C) → (B, H/2, W/2, 2C)


class ShiftedWindowAttention(MultiheadSelfAttention):
    """Window multi-head self-attention with a relative-position bias (W-MSA / SW-MSA)."""

    def __init__(self, dim: int, num_heads: int, window_size: tuple[int, int],
                 shift_size: tuple[int, int], *, attention_dropout: float = 0.0,
                 dropout: float = 0.0):
        super().__init__(dim, num_heads, qkv_bias=True, attn_drop=attention_dropout,
                         proj_drop=dropout)
        self.window_size, self.shift_size = tuple(window_size), tuple(shift_size)
        wh, ww = self.window_size
        table = torch.zeros((2 * wh - 1) * (2 * ww - 1), num_heads)  # one row per 2-D offset
        self.relative_position_bias_table = nn.Parameter(table)
        self.register_buffer("relative_position_index",
                             relative_position_index(self.window_size, self.window_size))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)  # torchvision

    def relative_position_bias(self, window: tuple[int, int]) -> torch.Tensor:
        """(heads, N, N) bias for a window of this size (smaller than `window_size` on small maps)."""
        n = window[0] * window[1]
        if window == self.window_size:
            index = self.relative_position_index
        else:
            index = relative_position_index(window, self.window_size)
            index = index.to(self.relative_position_index.device)
        return self.relative_position_bias_table[index].view(n, n, -1).permute(2, 0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, H, W, C)
        B, H, W, C = x.shape
        # a window never exceeds the map, and a window covering the whole side needs no shift
        window = (min(self.window_size[0], H), min(self.window_size[1], W))
        shift = tuple(s if w < side else 0 for s, w, side in zip(self.shift_size, window, (H, W)))
        pad_h, pad_w = (-H) % window[0], (-W) % window[1]
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))  # sides up to multiples of the window
        Hp, Wp = H + pad_h, W + pad_w
        if any(shift):
            x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
        nh, nw = Hp // window[0], Wp // window[1]
        x = x.view(B, nh, window[0], nw, window[1], C).transpose(2, 3)  # (B, nh, nw, wh, ww, C)
        x = x.reshape(B, nh * nw, window[0] * window[1], C)  # (B, windows, N, C)

        bias = self.relative_position_bias(window).unsqueeze(0)  # (1, heads, N, N)
        if any(shift):
            mask = shifted_window_mask(Hp, Wp, window, shift, device=x.device)  # (windows, N, N)
            bias = (bias + mask.unsqueeze(1)).repeat(B, 1, 1, 1)  # (B·windows, heads, N, N)
        x = super().forward(x, attn_bias=bias)  # (B, windows, N, C)

        x = x.view(B, nh, nw, window[0], window[1], C).transpose(2, 3).reshape(B, Hp, Wp, C)
        if any(shift):
            x = torch.roll(x, shifts=shift, dims=(1, 2))
        return x[:, :H, :W].contiguous()


class SwinTransformerBlock(nn.Module):
    """x + DropPath(W-MSA(LN(x))), then x + DropPath(MLP(LN(x))); `shift_size` 0 or half a window."""

    def __init__(self, dim: int, num_heads: int, window_size: tuple[int, int],
                 shift_size: tuple[int, int], *, mlp_ratio: float = 4.0, dropout: float = 0.0,
                 attention_dropout: float = 0.0, stochastic_depth_prob: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = ShiftedWindowAttention(dim, num_heads, window_size, shift_size,
                                           attention_dropout=attention_dropout, dropout=dropout)
        self.stochastic_depth = DropPath(stochastic_depth_prob)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=dropout, names=TORCHVISION_MLP_NAMES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, H, W, C)
        x = x + self.stochastic_depth(self.attn(self.norm1(x)))
        return x + self.stochastic_depth(self.mlp(self.norm2(x)))


class Permute(nn.Module):
    """`x.permute(*dims)` as a module, so the patch embedding stays one Sequential (torchvision)."""

    def __init__(self, *dims: int):
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.dims)


class SwinTransformer(nn.Module):
    """Patch embedding → 4 stages of Swin blocks (patch merging between them) → LayerNorm → average
    pool → linear head. Works channels-last inside, (B, H, W, C), as torchvision does."""

    def __init__(self, *, embed_dim: int, depths: tuple[int, ...], num_heads: tuple[int, ...],
                 patch_size: int = 4, window_size: int = 7, stochastic_depth_prob: float = 0.2,
                 mlp_ratio: float = 4.0, dropout: float = 0.0, attention_dropout: float = 0.0,
                 num_classes: int = 1000, in_chans: int = 3):
        super().__init__()
        self.num_classes, self.in_chans = num_classes, in_chans
        window = (window_size, window_size)
        layers: list[nn.Module] = [nn.Sequential(
            nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size),
            Permute(0, 2, 3, 1),  # (B, C, H, W) → (B, H, W, C)
            nn.LayerNorm(embed_dim))]
        total, block_id = sum(depths), 0
        for stage, (depth, heads) in enumerate(zip(depths, num_heads)):
            dim = embed_dim * 2 ** stage
            blocks = []
            for i in range(depth):
                # stochastic depth grows linearly with depth, from 0 to the given rate (torchvision)
                p = stochastic_depth_prob * block_id / max(total - 1, 1)
                shift = (0, 0) if i % 2 == 0 else (window_size // 2, window_size // 2)
                blocks.append(SwinTransformerBlock(
                    dim, heads, window, shift, mlp_ratio=mlp_ratio, dropout=dropout,
                    attention_dropout=attention_dropout, stochastic_depth_prob=p))
                block_id += 1
            layers.append(nn.Sequential(*blocks))
            if stage < len(depths) - 1:
                layers.append(PatchMerging(dim))
        self.features = nn.Sequential(*layers)
        self.num_features = embed_dim * 2 ** (len(depths) - 1)
        self.norm = nn.LayerNorm(self.num_features)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(self.num_features, num_classes)
        # torchvision: every Linear (qkv, proj, MLP, reduction, head) ~ trunc_normal(0.02), zero bias
        init_trunc_normal_(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) → normalised last-stage feature map (B, C', H/32, W/32) (patch 4)."""
        x = self.norm(self.features(x))  # (B, h, w, C')
        return x.permute(0, 3, 1, 2)  # channels first, like every other cnnkit feature map

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.avgpool(x), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _build_swin(num_classes: int, in_chans: int, dim: int, depths: tuple[int, ...],
                heads: tuple[int, ...], drop_path: float, *, small_input: bool = False,
                patch_size: int | None = None, window_size: int | None = None,
                stochastic_depth_prob: float | None = None, **kwargs) -> SwinTransformer:
    """Variant hyperparameters: embedding width, blocks and heads per stage, stochastic depth rate."""
    return SwinTransformer(
        embed_dim=dim, depths=depths, num_heads=heads,
        patch_size=patch_size or (2 if small_input else 4),
        window_size=window_size or (4 if small_input else 7),
        stochastic_depth_prob=drop_path if stochastic_depth_prob is None else stochastic_depth_prob,
        num_classes=num_classes, in_chans=in_chans, **kwargs)


_TEST = dict(test_input_size=(3, 32, 32), test_kwargs={"small_input": True})


@register_model(**_TEST)
def swin_t(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> SwinTransformer:
    return _build_swin(num_classes, in_chans, 96, (2, 2, 6, 2), (3, 6, 12, 24), 0.2, **kwargs)


@register_model(**_TEST)
def swin_s(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> SwinTransformer:
    return _build_swin(num_classes, in_chans, 96, (2, 2, 18, 2), (3, 6, 12, 24), 0.3, **kwargs)


@register_model(**_TEST)
def swin_b(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> SwinTransformer:
    return _build_swin(num_classes, in_chans, 128, (2, 2, 18, 2), (4, 8, 16, 32), 0.5, **kwargs)
