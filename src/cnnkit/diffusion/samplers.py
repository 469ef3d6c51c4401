"""Samplers of a trained denoiser: DDPM ancestral sampling, DDIM and DPM-Solver++, with
classifier-free guidance.

All run under `torch.inference_mode()` and draw every random number from `generator`, in the same
order (x_T first, then one noise tensor per step; DDIM with η = 0 and DPM-Solver++ draw none after
x_T), so `ddim_sample(steps=T, eta=1)` and `ddpm_sample` given the same seed walk the same chain.
Predicted x̂_0 is clipped to [-1, 1], the data range (Ho et al.'s `clip_denoised`).
"""
from __future__ import annotations

import math
import sys

import torch
from torch import nn

from cnnkit.diffusion.process import GaussianDiffusion, extract
from cnnkit.utils import CnnkitError


def guided_eps(process: GaussianDiffusion, model: nn.Module, x: torch.Tensor, t: torch.Tensor,
               labels: torch.Tensor | None, guidance: float) -> torch.Tensor:
    """ε = ε(x, t, ∅) + w·(ε(x, t, c) − ε(x, t, ∅)): Ho & Salimans 2022, "Classifier-Free
    Diffusion Guidance" (https://arxiv.org/abs/2207.12598), with w = `guidance` (their 1 + w).

    w = 1 is the plain conditional prediction (one forward); otherwise the conditional and the
    unconditional halves go through the network as one batch of 2B.
    """
    # .float(): under bf16 autocast the sampler's arithmetic (and guidance's difference) stays fp32
    if labels is None or guidance == 1.0:
        return model(x, t, labels).float()
    null = torch.full_like(labels, process.num_classes)
    eps = model(torch.cat([x, x]), torch.cat([t, t]),
                torch.cat([labels, null])).float()  # (2B, C, H, W)
    eps_cond, eps_uncond = eps.chunk(2)
    return eps_uncond + guidance * (eps_cond - eps_uncond)


def ddpm_step(process: GaussianDiffusion, xt: torch.Tensor, t: torch.Tensor, eps: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation of p(x_{t−1} | x_t) = q(x_{t−1} | x_t, x̂_0) (Ho et al. eq. 7,
    σ_t² = β̃_t), x̂_0 from ε and clipped. The last step (t = 0) adds no noise: std 0."""
    x0 = process.predict_x0_from_eps(xt, t, eps).clamp(-1.0, 1.0)
    mean, _, log_variance = process.q_posterior(x0, xt, t)
    nonzero = (t > 0).to(xt.dtype).view(-1, *([1] * (xt.dim() - 1)))  # (B, 1, 1, 1)
    return mean, nonzero * (0.5 * log_variance).exp()


def ddim_step(process: GaussianDiffusion, xt: torch.Tensor, t: torch.Tensor, t_prev: torch.Tensor,
              eps: torch.Tensor, eta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation of the DDIM update from t to t_prev < t: Song, Meng & Ermon
    2021, "Denoising Diffusion Implicit Models" eq. 12 (https://arxiv.org/abs/2010.02502):

        x_prev = √ᾱ_prev x̂_0 + √(1 − ᾱ_prev − σ²) ε̂ + σ z,
        σ = η √((1 − ᾱ_prev)/(1 − ᾱ_t)) √(1 − ᾱ_t/ᾱ_prev).

    t_prev = −1 means ᾱ_prev = 1 (the step to x_0). With η = 1 and t_prev = t − 1, σ² = β̃_t and
    the mean is μ̃_t: exactly the DDPM step. ε̂ is recomputed from the clipped x̂_0 so that both
    terms describe the same x̂_0.
    """
    x0 = process.predict_x0_from_eps(xt, t, eps).clamp(-1.0, 1.0)
    eps = process.predict_eps_from_x0(xt, t, x0)
    ndim = xt.dim()
    one_minus = extract(process.one_minus_alphas_cumprod, t, ndim)  # (B, 1, 1, 1)
    has_prev = (t_prev >= 0).view_as(one_minus)
    prev = t_prev.clamp(min=0)
    alpha_bar_prev = torch.where(has_prev, extract(process.alphas_cumprod, prev, ndim), 1.0)
    one_minus_prev = torch.where(has_prev, extract(process.one_minus_alphas_cumprod, prev, ndim),
                                 0.0)
    log_ratio = extract(process.log_alphas_cumprod, t, ndim) - torch.where(
        has_prev, extract(process.log_alphas_cumprod, prev, ndim), 0.0)  # log(ᾱ_t/ᾱ_prev)
    # 1 − ᾱ_t/ᾱ_prev as −expm1(log ratio): accurate both near t = 0, where it is ~1e-4 and
    # 1 − float32 ratio would keep three digits, and near T, where differences of 1 − ᾱ cancel.
    variance = eta**2 * one_minus_prev / one_minus * -torch.expm1(log_ratio)
    mean = alpha_bar_prev.sqrt() * x0 + (one_minus_prev - variance).clamp(min=0).sqrt() * eps
    sigma = variance.sqrt()
    return mean, sigma


def ddim_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """`steps` timesteps from T−1 down to 0, evenly spaced (Song et al. §4.2's "linear" τ)."""
    if not 1 <= steps <= num_timesteps:
        raise CnnkitError(f"sampler steps must be in 1..{num_timesteps} (the process's T), "
                          f"got {steps}")
    grid = torch.linspace(0, num_timesteps - 1, steps, dtype=torch.float64).round().long()
    return grid.flip(0).tolist()


def _log_snr(process: GaussianDiffusion) -> tuple[torch.Tensor, ...]:
    """λ_t = log(α_t/σ_t), α_t and σ_t per timestep in float64, from log ᾱ and 1 − ᾱ (which keep
    their digits at both ends)."""
    log_alpha_bar = process.log_alphas_cumprod.double()
    one_minus = process.one_minus_alphas_cumprod.double()
    return 0.5 * (log_alpha_bar - one_minus.log()), (0.5 * log_alpha_bar).exp(), one_minus.sqrt()


def logsnr_timesteps(lambdas: torch.Tensor, steps: int) -> list[int]:
    """About `steps` timesteps from T−1 down to 0 whose λ are evenly spaced: each target λ is
    taken by the nearest timestep, and a timestep two targets share is used once."""
    num_timesteps = len(lambdas)
    ddim_timesteps(num_timesteps, steps)  # the same range check
    targets = torch.linspace(float(lambdas[-1]), float(lambdas[0]), steps, dtype=torch.float64)
    nearest = (lambdas[None, :] - targets[:, None]).abs().argmin(dim=1)  # (steps,)
    return sorted(set(nearest.tolist()), reverse=True)


@torch.inference_mode()
def ddpm_sample(process: GaussianDiffusion, model: nn.Module, shape: tuple[int, ...],
                labels: torch.Tensor | int | None = None, guidance: float = 1.0,
                generator: torch.Generator | None = None, progress: bool = False,
                noise: torch.Tensor | None = None) -> torch.Tensor:
    """Ancestral sampling (Ho et al. Algorithm 2): T steps from x_T ~ N(0, I) (or `noise`)."""
    timesteps = list(range(process.num_timesteps - 1, -1, -1))
    return _sample(process, model, shape, labels, guidance, generator, progress, noise,
                   [(t, t - 1) for t in timesteps], eta=None, desc="DDPM")


@torch.inference_mode()
def ddim_sample(process: GaussianDiffusion, model: nn.Module, shape: tuple[int, ...],
                labels: torch.Tensor | int | None = None, guidance: float = 1.0,
                generator: torch.Generator | None = None, progress: bool = False,
                noise: torch.Tensor | None = None, steps: int = 50, eta: float = 0.0
                ) -> torch.Tensor:
    """DDIM sampling in `steps` steps; η = 0 is deterministic given x_T, η = 1 with steps = T is
    DDPM's ancestral sampler."""
    if eta < 0:
        raise CnnkitError(f"eta must be ≥ 0, got {eta}")
    timesteps = ddim_timesteps(process.num_timesteps, steps)
    pairs = list(zip(timesteps, timesteps[1:] + [-1]))
    return _sample(process, model, shape, labels, guidance, generator, progress, noise, pairs,
                   eta=eta, desc=f"DDIM η={eta:g}")


@torch.inference_mode()
def dpm_solver_sample(process: GaussianDiffusion, model: nn.Module, shape: tuple[int, ...],
                      labels: torch.Tensor | int | None = None, guidance: float = 1.0,
                      generator: torch.Generator | None = None, progress: bool = False,
                      noise: torch.Tensor | None = None, steps: int = 20, order: int = 2
                      ) -> torch.Tensor:
    """DPM-Solver++(2M): Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of
    Diffusion Probabilistic Models" (https://arxiv.org/abs/2211.01095), Algorithm 2 — the
    probability-flow ODE solved in its data-prediction form, multistep, second order. With
    λ = log(α/σ), α = √ᾱ, σ = √(1 − ᾱ) and h = λ_next − λ_now,

        x_next = (σ_next/σ_now) x − α_next (e^{−h} − 1) D,
        D = (1 + 1/2r) x̂_0(now) − (1/2r) x̂_0(previous),  r = h_previous / h,

    D = x̂_0(now) at the first step (no history; that step is DDIM's). `steps` network
    evaluations at timesteps evenly spaced in λ (`logsnr_timesteps`: the paper's "logSNR"
    skip type; on a linear schedule the even-t grid puts one long last step after a run of
    short ones, which the extrapolation in D overshoots), x̂_0 from the guided ε and clipped to
    [-1, 1] (static thresholding, §5 of the paper); the last step goes to ᾱ = 1, where the
    update is x̂_0 itself. `order=1` is DDIM with η = 0 on the same timesteps, exactly.
    """
    if order not in (1, 2):
        raise CnnkitError(f"DPM-Solver++ order must be 1 or 2, got {order}")
    lambdas, alphas, sigmas = _log_snr(process)
    timesteps = logsnr_timesteps(lambdas, steps)
    x, labels, _ = _start(process, shape, labels, guidance, generator, noise)
    previous_x0 = previous_h = None
    was_training = model.training
    model.eval()
    from tqdm import tqdm  # noqa: PLC0415
    for i, t_now in enumerate(tqdm(timesteps, desc=f"DPM-Solver++ {order}M", leave=False,
                                   disable=not progress or not sys.stderr.isatty())):
        t = torch.full((shape[0],), t_now, dtype=torch.long, device=x.device)  # (B,)
        eps = guided_eps(process, model, x, t, labels, guidance)
        x0 = process.predict_x0_from_eps(x, t, eps).clamp(-1.0, 1.0)
        if i == len(timesteps) - 1:
            x = x0  # σ_next = 0, e^{−h} = 0: the ODE ends at x̂_0
            break
        t_next = timesteps[i + 1]
        h = float(lambdas[t_next] - lambdas[t_now])
        d = x0
        if order == 2 and previous_x0 is not None:
            half_inverse_r = 0.5 * h / previous_h  # 1/(2r)
            d = (1 + half_inverse_r) * x0 - half_inverse_r * previous_x0
        x = float(sigmas[t_next] / sigmas[t_now]) * x - float(alphas[t_next]) * math.expm1(-h) * d
        previous_x0, previous_h = x0, h
    model.train(was_training)
    return x


def _start(process, shape, labels, guidance, generator, noise):
    """(x_T float32 on the process's device, checked labels, the device noise is drawn on)."""
    device = process.betas.device
    labels = _check_labels(process, labels, guidance, shape[0], device)
    # Noise is drawn where the generator lives (a CPU generator gives the same images on any
    # device) and then moved.
    noise_device = generator.device if generator is not None else device
    if noise is None:
        noise = torch.randn(shape, generator=generator, device=noise_device)
    elif tuple(noise.shape) != tuple(shape):
        raise CnnkitError(f"noise has shape {tuple(noise.shape)}, expected {tuple(shape)}")
    return noise.to(device=device, dtype=torch.float32), labels, noise_device


def _sample(process, model, shape, labels, guidance, generator, progress, noise, pairs, *,
            eta: float | None, desc: str) -> torch.Tensor:
    x, labels, noise_device = _start(process, shape, labels, guidance, generator, noise)
    device = x.device
    was_training = model.training
    model.eval()
    from tqdm import tqdm  # noqa: PLC0415
    for t_now, t_prev in tqdm(pairs, desc=desc, leave=False, disable=not progress or not
                              sys.stderr.isatty()):
        t = torch.full((shape[0],), t_now, dtype=torch.long, device=device)  # (B,)
        eps = guided_eps(process, model, x, t, labels, guidance).float()
        if eta is None:
            mean, std = ddpm_step(process, x, t, eps)
        else:
            mean, std = ddim_step(process, x, t, torch.full_like(t, t_prev), eps, eta)
        if eta is None or eta > 0:
            x = mean + std * torch.randn(shape, generator=generator,
                                         device=noise_device).to(device)
        else:
            x = mean
    model.train(was_training)
    return x


def _check_labels(process, labels, guidance, batch, device) -> torch.Tensor | None:
    if process.num_classes == 0:
        if labels is not None:
            raise CnnkitError("class labels given, but the model is unconditional (trained "
                              "without --class-conditional)")
        if guidance != 1.0:
            raise CnnkitError(f"guidance {guidance} needs a class-conditional model; this one is "
                              "unconditional")
        return None
    if labels is None:
        if guidance != 1.0:
            raise CnnkitError("guidance needs class labels to guide towards (e.g. --class 3)")
        return None  # the null class: unconditional samples of a conditional model
    labels = torch.as_tensor(labels, dtype=torch.long, device=device)
    if labels.dim() > 1 or labels.numel() not in (1, batch):
        raise CnnkitError(f"labels must be one class or {batch} classes, got shape "
                          f"{tuple(labels.shape)}")
    labels = labels.reshape(-1).expand(batch)  # (B,)
    if ((labels < 0) | (labels >= process.num_classes)).any():
        raise CnnkitError(f"class labels must be in 0..{process.num_classes - 1}, got "
                          f"{labels.min().item()}..{labels.max().item()}")
    return labels
