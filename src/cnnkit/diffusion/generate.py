"""Images from a `cnnkit diffusion train` checkpoint: the EMA denoiser, any sampler, in batches.

Shared by `cnnkit diffusion sample` and benchmarks/ddpm_mnist.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import nn

from cnnkit.diffusion.process import GaussianDiffusion
from cnnkit.diffusion.samplers import ddim_sample, ddpm_sample
from cnnkit.diffusion.train import build_process
from cnnkit.models import create_model
from cnnkit.train.checkpoint import load_checkpoint
from cnnkit.train.config import native_bf16
from cnnkit.train.metrics import autocast
from cnnkit.utils import CnnkitError


@dataclass
class Diffusion:
    """A trained run's sampling parts: the process, the EMA denoiser, the data's format."""
    process: GaussianDiffusion
    model: nn.Module
    classes: list[str]
    image_shape: tuple[int, ...]  # (C, H, W)


def load_diffusion(path: str | Path) -> Diffusion:
    ckpt = load_checkpoint(path)
    if "ema" not in ckpt or ckpt.get("model_name") != "ddpm_unet":
        raise CnnkitError(f"{path} is not a diffusion checkpoint (written by "
                          "`cnnkit diffusion train`)")
    model = create_model("ddpm_unet", **ckpt["model_kwargs"])
    model.load_state_dict(ckpt["ema"]["model"])  # sampling uses the weight average
    return Diffusion(build_process(ckpt["config"], None), model.eval(), ckpt["classes"],
                     tuple(ckpt["image_size"]))


def generate(diffusion: Diffusion, n: int, *, sampler: str = "ddim", steps: int = 50,
             eta: float = 0.0, labels: torch.Tensor | None = None, guidance: float = 1.0,
             seed: int = 0, batch_size: int = 100, precision: str = "fp32",
             progress: bool = False) -> torch.Tensor:
    """`n` images in [-1, 1], (n, C, H, W) float32, denoised `batch_size` at a time.

    One generator seeded with `seed` feeds every batch, so the result depends on the batch size
    only through the order of draws. `precision` "bf16" runs the U-Net under bf16 autocast (the
    sampler's own arithmetic stays fp32); "auto" picks it where the CPU computes bf16 natively.
    """
    if n < 1 or batch_size < 1:
        raise CnnkitError(f"the number of images and the batch size must be at least 1, got "
                          f"{n} and {batch_size}")
    if precision == "auto":
        precision = "bf16" if native_bf16() else "fp32"
    if sampler == "ddpm":
        run = partial(ddpm_sample, diffusion.process, diffusion.model)
    elif sampler == "ddim":
        run = partial(ddim_sample, diffusion.process, diffusion.model, steps=steps, eta=eta)
    else:
        raise CnnkitError(f"unknown sampler '{sampler}'; choose ddim or ddpm")
    generator = torch.Generator().manual_seed(seed)
    chunks = []
    for first in range(0, n, batch_size):
        count = min(batch_size, n - first)
        with autocast(precision):
            chunks.append(run((count, *diffusion.image_shape), guidance=guidance,
                              labels=None if labels is None else labels[first:first + count],
                              generator=generator, progress=progress))
    return torch.cat(chunks)
