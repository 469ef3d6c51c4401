"""The DDPM denoiser: a U-Net of residual blocks with a sinusoidal time embedding, after Ho et al.
2020, "Denoising Diffusion Probabilistic Models" appendix B (https://arxiv.org/abs/2006.11239),
itself PixelCNN++'s backbone (Salimans et al. 2017) with Wide-ResNet blocks, GroupNorm and
self-attention at low resolutions (Wang et al. 2018's non-local block).

    x (B, C, H, W), t (B,) → conv_in → [ResBlock × n (+ attention) → Downsample] per level
    → mid: ResBlock, attention, ResBlock → [ResBlock × (n + 1) on concatenated skips
    (+ attention) → Upsample] per level → GroupNorm → SiLU → conv_out → ε̂ (B, C, H, W)

Class conditioning (for classifier-free guidance) adds a learned class embedding to the time
embedding; the last of its `num_classes + 1` rows is the "null" class, the unconditional model.
The denoiser knows nothing of the diffusion process: it maps (x_t, t, labels) to a tensor.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cnnkit.layers import get_act
from cnnkit.models._registry import register_model
from cnnkit.utils import CnnkitError


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (B,) timesteps → (B, dim): [sin(t·ω_i), cos(t·ω_i)],
    ω_i = max_period^(−i/(dim/2 − 1)), i = 0..dim/2 − 1 (Vaswani et al. 2017 §3.5, in the layout of
    Ho et al.'s `get_timestep_embedding`: all sines, then all cosines)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device,
                                                           dtype=torch.float32) / (half - 1))
    args = t.float()[:, None] * freqs[None]  # (B, half)
    emb = torch.cat([args.sin(), args.cos()], dim=1)  # (B, 2·half)
    return F.pad(emb, (0, dim % 2))  # an odd dim gets one zero column


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm (Wu & He 2018) with at least 4 channels per group, at most 32 groups: Ho et al.'s
    32 groups of 128 channels keep 4 per group; 32 groups of 32 channels would normalise every
    channel alone, which Wu & He found worse (their Fig. 5)."""
    return nn.GroupNorm(math.gcd(32, max(channels // 4, 1)), channels)


def zero_init_(module: nn.Module) -> nn.Module:
    """Zero weights and bias: the branch starts as the identity (residual) or zero (output).

    Ho et al.'s code initialises each block's last conv, the attention projection and the output
    conv with scale 0; the network then starts out predicting ε̂ = 0, the loss starts at E‖ε‖² = 1,
    and every residual block starts as the identity (Goyal et al. 2017, Fixup, Zhang et al. 2019).
    """
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


# --- blocks ---

class ResBlock(nn.Module):
    """GroupNorm → SiLU → conv3×3 → + Linear(SiLU(emb)) → GroupNorm → SiLU → dropout → conv3×3,
    plus a (1×1-projected where the width changes) shortcut.

    Pre-activation order (He et al. 2016, "Identity Mappings"): the norm acts on the block's
    *input* channels, which `ConvNormAct` (norm after the conv, on its output) cannot express;
    the activation still comes from the shared `get_act`.
    """

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.act1 = get_act("silu")
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb_proj = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, out_channels))
        self.norm2 = group_norm(out_channels)
        self.act2 = get_act("silu")
        self.drop = nn.Dropout(dropout)
        self.conv2 = zero_init_(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.shortcut = (nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels
                         else nn.Identity())

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.act1(self.norm1(x)))  # (B, out, H, W)
        h = h + self.emb_proj(emb)[:, :, None, None]  # time (+ class) as a per-channel shift
        h = self.conv2(self.drop(self.act2(self.norm2(h))))
        return self.shortcut(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the H·W positions, GroupNorm first, residual around it."""

    def __init__(self, channels: int, head_dim: int = 32):
        super().__init__()
        self.num_heads = max(1, channels // head_dim)
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_init_(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.num_heads, c // self.num_heads, h * w)
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # each (B, heads, H·W, C/heads)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, H·W, C/heads)
        out = out.transpose(-1, -2).reshape(b, c, h, w)  # (B, C, H, W)
        return x + self.proj(out)


class Downsample(nn.Module):
    """conv3×3 stride 2: H → ⌈H/2⌉ (28 → 14 → 7)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour resize to the skip's size, then conv3×3 (no checkerboard artefacts of
    transposed convs, Odena et al. 2016); a side that did not halve evenly (7 → 4) comes back."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return self.conv(F.interpolate(x, size=size, mode="nearest"))


class Level(nn.Module):
    """The blocks of one resolution: ResBlocks, each followed by attention where asked."""

    def __init__(self, channels_in: list[int], out_channels: int, emb_dim: int, dropout: float,
                 attention: bool):
        super().__init__()
        self.res = nn.ModuleList(ResBlock(c, out_channels, emb_dim, dropout) for c in channels_in)
        self.attn = nn.ModuleList(AttentionBlock(out_channels) if attention else nn.Identity()
                                  for _ in channels_in)


# --- the model ---

class UNet(nn.Module):
    """ε_θ(x_t, t, labels) for `GaussianDiffusion`: output shaped like the input.

    `channel_mults[i]` × `base_channels` is the width at level i (resolution img_size / 2^i);
    `attention_resolutions` lists the sides (in pixels) that get self-attention; `num_classes`
    0 is unconditional, otherwise labels in 0..num_classes − 1, or num_classes (or None) for the
    null class.
    """

    generative = True  # a denoiser, not a classifier: the classifier zoo tests skip it

    def __init__(self, *, in_chans: int = 1, img_size: int = 28, base_channels: int = 32,
                 channel_mults: tuple[int, ...] = (1, 2, 2), num_res_blocks: int = 1,
                 attention_resolutions: tuple[int, ...] = (7,), dropout: float = 0.0,
                 num_classes: int = 0):
        super().__init__()
        if base_channels < 4 or base_channels % 4:
            raise CnnkitError(f"base_channels must be a positive multiple of 4, got "
                              f"{base_channels}")
        if not channel_mults or num_res_blocks < 1:
            raise CnnkitError("the U-Net needs at least one level and one ResBlock per level")
        self.in_chans, self.img_size, self.num_classes = in_chans, img_size, num_classes
        self.base_channels = base_channels
        emb_dim = 4 * base_channels  # Ho et al.: time embedding 4× the base width
        self.time_mlp = nn.Sequential(nn.Linear(base_channels, emb_dim), nn.SiLU(),
                                      nn.Linear(emb_dim, emb_dim))
        self.class_emb = nn.Embedding(num_classes + 1, emb_dim) if num_classes > 0 else None
        self.conv_in = nn.Conv2d(in_chans, base_channels, 3, padding=1)

        sides = [img_size]
        for _ in channel_mults[1:]:
            sides.append(math.ceil(sides[-1] / 2))
        widths = [base_channels * m for m in channel_mults]
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        skips, width = [base_channels], base_channels  # channels of every skip, in push order
        for i, (side, out) in enumerate(zip(sides, widths)):
            level_in = [width] + [out] * (num_res_blocks - 1)
            self.down.append(Level(level_in, out, emb_dim, dropout, side in attention_resolutions))
            skips += [out] * num_res_blocks
            width = out
            last = i == len(widths) - 1
            self.downsample.append(nn.Identity() if last else Downsample(width))
            if not last:
                skips.append(width)
        self.mid1 = ResBlock(width, width, emb_dim, dropout)
        self.mid_attn = AttentionBlock(width)
        self.mid2 = ResBlock(width, width, emb_dim, dropout)
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for i in reversed(range(len(widths))):
            level_in = []
            for _ in range(num_res_blocks + 1):
                level_in.append(width + skips.pop())
                width = widths[i]
            self.up.append(Level(level_in, widths[i], emb_dim, dropout,
                                 sides[i] in attention_resolutions))
            self.upsample.append(Upsample(width) if i > 0 else nn.Identity())
        self.norm_out = group_norm(width)
        self.act_out = get_act("silu")
        self.conv_out = zero_init_(nn.Conv2d(width, in_chans, 3, padding=1))

    def embed(self, t: torch.Tensor, labels: torch.Tensor | None, batch: int) -> torch.Tensor:
        """Time embedding → MLP, plus the class embedding: (B, 4·base_channels)."""
        t = torch.as_tensor(t, device=self.conv_in.weight.device).reshape(-1).expand(batch)
        emb = self.time_mlp(timestep_embedding(t, self.base_channels))
        if self.class_emb is None:
            if labels is not None:
                raise CnnkitError("labels given to an unconditional U-Net (num_classes=0)")
            return emb
        if labels is None:
            labels = torch.full((batch,), self.num_classes, device=emb.device)
        return emb + self.class_emb(labels)

    def forward(self, x: torch.Tensor, t: torch.Tensor,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.embed(t, labels, len(x))
        h = self.conv_in(x)
        skips = [h]
        for level, downsample in zip(self.down, self.downsample):
            for res, attn in zip(level.res, level.attn):
                h = attn(res(h, emb))
                skips.append(h)
            if not isinstance(downsample, nn.Identity):
                h = downsample(h)
                skips.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for level, upsample in zip(self.up, self.upsample):
            for res, attn in zip(level.res, level.attn):
                h = attn(res(torch.cat([h, skips.pop()], dim=1), emb))  # (B, C + C_skip, H, W)
            if not isinstance(upsample, nn.Identity):
                h = upsample(h, skips[-1].shape[-2:])
        return self.conv_out(self.act_out(self.norm_out(h)))


def _build_unet(*, num_classes: int = 0, in_chans: int = 1, img_size: int = 28, **kwargs) -> UNet:
    for key in ("channel_mults", "attention_resolutions"):  # YAML / CLI lists → tuples
        if key in kwargs:
            kwargs[key] = tuple(int(v) for v in kwargs[key])
    return UNet(num_classes=num_classes, in_chans=in_chans, img_size=img_size, **kwargs)


@register_model(input_size=(1, 28, 28), fixed_input_size=True, test_kwargs={"base_channels": 8})
def ddpm_unet(num_classes: int = 0, in_chans: int = 1, img_size: int = 28, **kwargs) -> UNet:
    return _build_unet(num_classes=num_classes, in_chans=in_chans, img_size=img_size,
                       **{"base_channels": 32, "channel_mults": (1, 2, 2), "num_res_blocks": 1,
                          "attention_resolutions": (7,), **kwargs})
