"""ConViT: ConViT-Ti, ConViT-S, ConViT-B.

d'Ascoli et al. 2021, "ConViT: Improving Vision Transformers with Soft Convolutional Inductive
Biases", https://arxiv.org/abs/2103.10697. A DeiT whose first ten blocks use gated positional
self-attention (GPSA): each head mixes content attention with a positional attention that is
initialised to look at one fixed offset, like one tap of a convolution, and a learned gate per
head decides how much of that locality to keep. The class token joins only after the GPSA blocks.

The module names follow timm (`patch_embed.proj`, `cls_token`, `pos_embed`, `blocks.N` with
`attn.{qk, v, proj, pos_proj, gating_param}` in GPSA blocks and `attn.{qkv, proj}` after, `norm`,
`head`), so a timm checkpoint loads strictly. The relative-position table GPSA reads is a
non-persistent buffer: it follows `.to(device)` but, as in timm, is not in the state_dict.

Small images: the position embedding fixes the input size, so `img_size` and `patch_size` are
keywords; `small_input=True` changes their defaults to 32 and 4 (an 8×8 grid of 4×4 patches for
CIFAR); MNIST takes `small_input=True, img_size=28` (a 7×7 grid).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cnnkit.layers import (DropPath, Mlp, MultiheadSelfAttention, PatchEmbed, check_image_size,
                           init_trunc_normal_)
from cnnkit.models._registry import register_model


def relative_offsets(grid: int) -> torch.Tensor:
    """(g², g², 3): for each (query, key) patch pair, (Δx, Δy, Δx² + Δy²), key minus query."""
    ys, xs = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    xs, ys = xs.flatten(), ys.flatten()  # (g²,) row-major, as the patches are flattened
    dx = xs[None, :] - xs[:, None]  # (g², g²)
    dy = ys[None, :] - ys[:, None]
    return torch.stack([dx, dy, dx ** 2 + dy ** 2], dim=-1).float()


class GPSA(nn.Module):
    """Gated positional self-attention (the paper's eq. 5).

    attention = (1 − σ(λ_h)) · softmax(q kᵀ / √d) + σ(λ_h) · softmax(v_posᵀ r_ij), with r_ij the
    offset from query patch i to key patch j and λ_h the per-head `gating_param`.
    """

    def __init__(self, dim: int, num_heads: int, grid: int, *, qkv_bias: bool = False,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, locality_strength: float = 1.0):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.locality_strength = locality_strength
        self.qk = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.pos_proj = nn.Linear(3, num_heads)
        self.proj_drop = nn.Dropout(proj_drop)
        self.gating_param = nn.Parameter(torch.ones(num_heads))
        self.register_buffer("rel_indices", relative_offsets(grid), persistent=False)

    @torch.no_grad()
    def local_init(self) -> None:
        """Start as a convolution (section 3.1): head h attends around offset Δ_h on a √H × √H grid
        of offsets, with v = identity, so the block begins as a (soft) √H × √H conv."""
        self.v.weight.copy_(torch.eye(self.v.weight.shape[0]))
        kernel = int(self.num_heads ** 0.5)
        center = (kernel - 1) / 2
        weight = self.pos_proj.weight  # (heads, 3) acting on (Δx, Δy, |Δ|²)
        for h1 in range(kernel):
            for h2 in range(kernel):
                # −α(|Δ|² − 2Δ·Δ_h) = −α|Δ − Δ_h|² + const: peaked at Δ_h = (h2 − c, h1 − c)
                weight[h1 + kernel * h2] = torch.tensor([2 * (h2 - center), 2 * (h1 - center), -1.0])
        weight.mul_(self.locality_strength)

    def _queries_keys(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, N, _ = x.shape
        qk = self.qk(x).view(B, N, 2, self.num_heads, self.head_dim)
        q, k = qk.permute(2, 0, 3, 1, 4)  # 2 × (B, h, N, d)
        return q, k

    def _positional_attention(self) -> torch.Tensor:
        """(heads, N, N): the same for every image, since it depends on offsets only."""
        scores = self.pos_proj(self.rel_indices)  # (N, N, 3) → (N, N, h)
        return scores.permute(2, 0, 1).softmax(dim=-1)  # (h, N, N)

    def attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens (B, N, C) → the mixed attention matrix (B, heads, N, N), rows summing to 1."""
        q, k = self._queries_keys(x)
        content = (q @ k.transpose(-2, -1) * self.head_dim ** -0.5).softmax(dim=-1)  # (B, h, N, N)
        gate = torch.sigmoid(self.gating_param).view(-1, 1, 1)  # (h, 1, 1)
        attn = (1.0 - gate) * content + gate * self._positional_attention()
        return attn / attn.sum(dim=-1, keepdim=True)  # timm renormalises; a no-op up to rounding

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, C)
        B, N, C = x.shape
        v = self.v(x).view(B, N, self.num_heads, self.head_dim).transpose(1, 2)  # (B, h, N, d)
        if self.training and self.attn_drop.p > 0:  # dropout acts on the mixed matrix: build it
            x = self.attn_drop(self.attention_weights(x)) @ v
        else:
            # Both softmaxes have rows summing to 1, so the mixture needs no renormalisation and
            # splits into a fused SDPA call plus one positional matmul: ~4× faster on CPU.
            q, k = self._queries_keys(x)
            gate = torch.sigmoid(self.gating_param).view(-1, 1, 1)  # (h, 1, 1)
            x = ((1.0 - gate) * F.scaled_dot_product_attention(q, k, v)
                 + gate * (self._positional_attention() @ v))  # (B, h, N, d)
        x = x.transpose(1, 2).reshape(B, N, C)  # (B, h, N, d) → (B, N, C)
        return self.proj_drop(self.proj(x))


class Block(nn.Module):
    """x + DropPath(attn(LN(x))), then x + DropPath(MLP(LN(x))); attn is GPSA or plain MHSA."""

    def __init__(self, dim: int, num_heads: int, grid: int, *, use_gpsa: bool,
                 mlp_ratio: float = 4.0, drop: float = 0.0, attn_drop: float = 0.0,
                 drop_path: float = 0.0, locality_strength: float = 1.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        if use_gpsa:
            self.attn = GPSA(dim, num_heads, grid, attn_drop=attn_drop, proj_drop=drop,
                             locality_strength=locality_strength)
        else:  # timm's MHSA: same qkv / proj layout, no qkv bias
            self.attn = MultiheadSelfAttention(dim, num_heads, qkv_bias=False,
                                               attn_drop=attn_drop, proj_drop=drop)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, C)
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ConViT(nn.Module):
    """Patch embedding + position embedding → `local_up_to_layer` GPSA blocks → prepend the class
    token → MHSA blocks → LayerNorm → head on the class token."""

    def __init__(self, *, num_heads: int, head_width: int = 48, depth: int = 12,
                 img_size: int = 224, patch_size: int = 16, local_up_to_layer: int = 10,
                 locality_strength: float = 1.0, mlp_ratio: float = 4.0, drop_rate: float = 0.0,
                 pos_drop_rate: float = 0.0, proj_drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, num_classes: int = 1000, in_chans: int = 3):
        """Dropout rates as timm names them: `drop_rate` before the head, `pos_drop_rate` after the
        position embedding, `proj_drop_rate` after attention and MLP projections."""
        super().__init__()
        embed_dim = head_width * num_heads  # the paper scales width with the number of heads
        self.num_classes, self.in_chans, self.embed_dim = num_classes, in_chans, embed_dim
        self.img_size, self.local_up_to_layer = img_size, local_up_to_layer
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        grid = self.patch_embed.grid_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid, embed_dim))  # patches only
        self.pos_drop = nn.Dropout(pos_drop_rate)
        rates = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()  # stochastic depth decay rule
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, grid, use_gpsa=i < local_up_to_layer, mlp_ratio=mlp_ratio,
                  drop=proj_drop_rate, attn_drop=attn_drop_rate, drop_path=rates[i],
                  locality_strength=locality_strength)
            for i in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes)

        # timm: tokens and every Linear ~ trunc_normal(0.02), LayerNorms 1/0; then GPSA's local init
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        init_trunc_normal_(self)
        for m in self.modules():
            if isinstance(m, GPSA):
                m.local_init()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (N, C, H, W) → normalised tokens (N, 1 + patches, D), the class token first."""
        check_image_size(x, self.img_size, f"this ConViT (patch {self.patch_embed.patch_size})")
        x = self.pos_drop(self.patch_embed(x) + self.pos_embed)  # (N, L, D)
        cls = self.cls_token.expand(x.shape[0], -1, -1)  # (N, 1, D)
        for i, block in enumerate(self.blocks):
            if i == self.local_up_to_layer:  # GPSA works on the patch grid only
                x = torch.cat([cls, x], dim=1)  # (N, 1 + L, D)
            x = block(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_drop(x[:, 0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _build_convit(num_classes: int, in_chans: int, num_heads: int, *, small_input: bool = False,
                  img_size: int | None = None, patch_size: int | None = None, **kwargs) -> ConViT:
    return ConViT(num_heads=num_heads, img_size=img_size or (32 if small_input else 224),
                  patch_size=patch_size or (4 if small_input else 16), num_classes=num_classes,
                  in_chans=in_chans, **kwargs)


# The registry-wide tests use 32×32 images cut into a 4×4 grid of 8×8 patches.
_TEST = dict(fixed_input_size=True, test_input_size=(3, 32, 32),
             test_kwargs={"img_size": 32, "patch_size": 8})


@register_model(**_TEST)
def convit_tiny(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> ConViT:
    return _build_convit(num_classes, in_chans, num_heads=4, **kwargs)


@register_model(**_TEST)
def convit_small(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> ConViT:
    return _build_convit(num_classes, in_chans, num_heads=9, **kwargs)


@register_model(**_TEST)
def convit_base(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> ConViT:
    return _build_convit(num_classes, in_chans, num_heads=16, **kwargs)
