"""Noise schedules as pure functions: T → β_1..β_T, float64 (STYLE.md habit 11).

The process computes every derived coefficient (ᾱ, posterior terms) from these betas in float64
and only then stores them as float32 buffers, so 1 − ᾱ_t keeps its precision near t = 0.
"""
from __future__ import annotations

import math

import torch

from cnnkit.utils import CnnkitError, suggest


def linear_beta_schedule(T: int = 1000, beta_start: float = 1e-4,  # noqa: N803  (the papers' T)
                         beta_end: float = 0.02) -> torch.Tensor:
    """β rising linearly from 1e-4 to 0.02 over T = 1000 steps: Ho et al. 2020, "Denoising
    Diffusion Probabilistic Models" §4 (https://arxiv.org/abs/2006.11239). Small enough that each
    reverse step is close to Gaussian, large enough that ᾱ_T ≈ 4e-5 (x_T is nearly pure noise).
    """
    _check_steps(T)
    return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)


def cosine_beta_schedule(T: int = 1000, s: float = 0.008) -> torch.Tensor:  # noqa: N803
    """ᾱ_t = f(t)/f(0), f(t) = cos²((t/T + s)/(1 + s) · π/2); β_t = 1 − ᾱ_t/ᾱ_{t−1}, clipped at
    0.999: Nichol & Dhariwal 2021, "Improved Denoising Diffusion Probabilistic Models" eq. 17
    (https://arxiv.org/abs/2102.09672). ᾱ falls slowly at both ends, so fewer steps are wasted on
    near-pure noise; the offset s keeps β_1 from being vanishingly small; the clip prevents the
    singularity at t = T.
    """
    _check_steps(T)
    t = torch.arange(T + 1, dtype=torch.float64)
    f = torch.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # (T+1,)
    alphas_cumprod = f / f[0]
    betas = 1 - alphas_cumprod[1:] / alphas_cumprod[:-1]  # (T,)
    return betas.clamp(max=0.999)


SCHEDULES = {"linear": linear_beta_schedule, "cosine": cosine_beta_schedule}


def beta_schedule(name: str, T: int) -> torch.Tensor:  # noqa: N803
    """The named schedule's betas for T steps ('linear' or 'cosine')."""
    if name not in SCHEDULES:
        raise suggest(name, SCHEDULES, "noise schedule")
    return SCHEDULES[name](T)


def _check_steps(T: int) -> None:  # noqa: N803
    if T < 2:
        raise CnnkitError(f"a diffusion needs at least 2 timesteps, got {T}")
