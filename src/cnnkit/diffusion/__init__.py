"""Denoising diffusion (DDPM, DDIM, DPM-Solver++): schedules, the Gaussian process, samplers, EMA, training.

The process (`GaussianDiffusion`) is separate from the denoiser (a registered model such as
`ddpm_unet`), as in lucidrains' denoising-diffusion-pytorch (STYLE.md habit 11).
"""
from cnnkit.diffusion.ema import EMA
from cnnkit.diffusion.process import GaussianDiffusion
from cnnkit.diffusion.samplers import (ddim_sample, ddim_step, ddpm_sample, ddpm_step,
                                       dpm_solver_sample, guided_eps)
from cnnkit.diffusion.schedules import beta_schedule, cosine_beta_schedule, linear_beta_schedule

__all__ = ["EMA", "GaussianDiffusion", "ddim_sample", "ddim_step", "ddpm_sample", "ddpm_step",
           "dpm_solver_sample", "guided_eps", "beta_schedule", "cosine_beta_schedule",
           "linear_beta_schedule"]
