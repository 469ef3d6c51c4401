"""One sampling path for every generative task: a DDPM (any sampler, classifier-free guidance)
or a DCGAN checkpoint → images in [-1, 1], drawn in batches from one seeded generator.

Shared by `cnnkit sample` (alias `diffusion sample`, `gan sample`) and benchmarks/ddpm_mnist.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import nn

from cnnkit.diffusion.process import GaussianDiffusion, build_process
from cnnkit.diffusion.samplers import ddim_sample, ddpm_sample, dpm_solver_sample
from cnnkit.engine.device import autocast, native_bf16
from cnnkit.inference.load import load_model
from cnnkit.utils import CnnkitError


@dataclass
class Sampler:
    """A trained generative run's sampling parts (the EMA denoiser for DDPM; G for DCGAN)."""
    task: str  # "ddpm" or "dcgan"
    model: nn.Module
    classes: list[str]
    image_shape: tuple[int, ...]  # (C, H, W)
    num_classes: int  # 0: unconditional
    process: GaussianDiffusion | None = None  # DDPM only

    @property
    def num_timesteps(self) -> int:
        return self.process.num_timesteps if self.process is not None else 0


def load_sampler(path: str | Path) -> Sampler:
    """A DDPM or DCGAN checkpoint (a run folder means its best.pt, else last.pt)."""
    loaded = load_model(path, task=("ddpm", "dcgan"), command="`cnnkit sample`")
    if loaded.task == "ddpm":
        config = {**loaded.config, "num_classes": loaded.spec["num_classes"]}
        process = build_process(config, None)
        return Sampler("ddpm", loaded.model, loaded.classes, loaded.image_shape,
                       process.num_classes, process)
    return Sampler("dcgan", loaded.model, loaded.classes, loaded.image_shape,
                   loaded.model.num_classes)


def generate(sampler: Sampler, n: int, *, labels: torch.Tensor | None = None, seed: int = 0,
             batch_size: int = 100, precision: str = "fp32", method: str = "ddim",
             steps: int = 50, eta: float = 0.0, guidance: float = 1.0,
             progress: bool = False) -> torch.Tensor:
    """`n` images in [-1, 1], (n, C, H, W) float32 on the CPU, made `batch_size` at a time.

    One generator seeded with `seed` feeds every batch, so the result depends on the batch size
    only through the order of draws. DDPM: `method` "ddim" (`steps`, `eta`), "dpm++"
    (DPM-Solver++(2M), `steps`) or "ddpm" (all T steps), classifier-free `guidance`; "bf16"
    `precision` runs the U-Net under autocast (the sampler's own arithmetic stays fp32); "auto"
    picks it where the CPU computes bf16 natively.
    """
    if n < 1 or batch_size < 1:
        raise CnnkitError(f"the number of images and the batch size must be at least 1, got "
                          f"{n} and {batch_size}")
    if precision == "auto":
        precision = "bf16" if native_bf16() else "fp32"
    if sampler.task == "dcgan":
        run = partial(_dcgan_batch, sampler.model)
    elif method == "ddpm":
        run = partial(ddpm_sample, sampler.process, sampler.model, guidance=guidance,
                      progress=progress)
    elif method == "ddim":
        run = partial(ddim_sample, sampler.process, sampler.model, steps=steps, eta=eta,
                      guidance=guidance, progress=progress)
    elif method == "dpm++":
        run = partial(dpm_solver_sample, sampler.process, sampler.model, steps=steps,
                      guidance=guidance, progress=progress)
    else:
        raise CnnkitError(f"unknown sampler '{method}'; choose ddim, dpm++ or ddpm")
    generator = torch.Generator().manual_seed(seed)
    chunks = []
    for first in range(0, n, batch_size):
        count = min(batch_size, n - first)
        with autocast(precision), torch.inference_mode():
            chunks.append(run((count, *sampler.image_shape), generator=generator,
                              labels=None if labels is None else labels[first:first + count]
                              ).float().cpu())
    return torch.cat(chunks)


def _dcgan_batch(model: nn.Module, shape: tuple[int, ...], *, generator: torch.Generator,
                 labels: torch.Tensor | None) -> torch.Tensor:
    """One batch from G in eval mode (BatchNorm running statistics): z ~ N(0, I)."""
    z = torch.randn(shape[0], model.nz, generator=generator)  # (B, nz)
    return model.eval()(z, labels)  # (B, C, H, W) in [-1, 1]
