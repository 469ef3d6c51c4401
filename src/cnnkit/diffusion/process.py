"""The Gaussian diffusion process of Ho et al. 2020, "Denoising Diffusion Probabilistic Models"
(https://arxiv.org/abs/2006.11239), kept apart from the denoiser (lucidrains'
denoising-diffusion-pytorch, STYLE.md habit 11).

    forward:    q(x_t | x_0)      = N(√ᾱ_t x_0, (1 − ᾱ_t) I)                        (eq. 4)
    posterior:  q(x_{t−1} | x_t, x_0) = N(μ̃_t, β̃_t I),
                μ̃_t = β_t √ᾱ_{t−1}/(1 − ᾱ_t) · x_0 + (1 − ᾱ_{t−1}) √α_t/(1 − ᾱ_t) · x_t,
                β̃_t = (1 − ᾱ_{t−1})/(1 − ᾱ_t) · β_t                                (eqs. 6–7)
    loss:       E_{t, x_0, ε} ‖ε − ε_θ(√ᾱ_t x_0 + √(1 − ᾱ_t) ε, t)‖²                  (eq. 14)

Timesteps are 0-based in code: t = 0..T−1 holds the paper's t = 1..T, and ᾱ_{−1} = 1.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cnnkit.diffusion.schedules import beta_schedule
from cnnkit.utils import CnnkitError


def extract(coefficients: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """coefficients[t] shaped (B, 1, ..., 1) to broadcast over a batch of `ndim`-dim tensors."""
    return coefficients.gather(0, t).view(-1, *([1] * (ndim - 1)))  # (B, 1, 1, 1)


class GaussianDiffusion(nn.Module):
    """q(x_t | x_0), its posterior, and the ε-prediction loss for a denoiser ε_θ(x_t, t, labels).

    `model`: any module with `forward(x, t, labels=None)` returning a tensor shaped like x (or
    None when only the maths is needed). `betas`: (T,) from `cnnkit.diffusion.schedules`.
    `num_classes` > 0 turns on classifier-free guidance training (Ho & Salimans 2022,
    https://arxiv.org/abs/2207.12598): each label is replaced, with probability `p_uncond`, by the
    "null" class index `num_classes`, so one network learns both ε(x, t, c) and ε(x, t, ∅).
    """

    def __init__(self, model: nn.Module | None, betas: torch.Tensor, *, num_classes: int = 0,
                 p_uncond: float = 0.1):
        super().__init__()
        if betas.dim() != 1 or not ((betas > 0) & (betas < 1)).all():
            raise CnnkitError("betas must be a 1-D tensor of values in (0, 1)")
        if not 0.0 <= p_uncond < 1.0:
            raise CnnkitError(f"p_uncond must be in [0, 1), got {p_uncond}")
        self.model = model
        self.num_classes, self.p_uncond = num_classes, p_uncond
        self.num_timesteps = len(betas)

        # Everything in float64 first: 1 − ᾱ_t is ~1e-4 at t = 0, where float32 would lose digits.
        betas = betas.to(torch.float64)
        alphas = 1.0 - betas
        alphas_cumprod = torch.cumprod(alphas, 0)
        alphas_cumprod_prev = F.pad(alphas_cumprod[:-1], (1, 0), value=1.0)  # ᾱ_{t−1}, ᾱ_{−1} = 1
        posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        coefficients = {
            "betas": betas,
            "alphas_cumprod": alphas_cumprod,
            "alphas_cumprod_prev": alphas_cumprod_prev,
            "sqrt_alphas_cumprod": alphas_cumprod.sqrt(),
            # 1 − ᾱ and log ᾱ keep their digits at both ends, where 1 − float32(ᾱ) (t ≈ 0) and
            # differences of 1 − ᾱ (t ≈ T) lose them; DDIM's coefficients are built from these.
            "one_minus_alphas_cumprod": 1.0 - alphas_cumprod,
            "log_alphas_cumprod": alphas_cumprod.log(),
            "sqrt_one_minus_alphas_cumprod": (1.0 - alphas_cumprod).sqrt(),
            "sqrt_recip_alphas_cumprod": (1.0 / alphas_cumprod).sqrt(),
            "sqrt_recipm1_alphas_cumprod": (1.0 / alphas_cumprod - 1.0).sqrt(),
            "posterior_variance": posterior_variance,
            # β̃_0 = 0: its log is clipped to β̃_1's, as in Ho et al.'s code (the t = 0 step adds
            # no noise anyway; the clip only keeps the log finite).
            "posterior_log_variance_clipped": torch.log(
                torch.cat([posterior_variance[1:2], posterior_variance[1:]])),
            "posterior_mean_coef1": betas * alphas_cumprod_prev.sqrt() / (1.0 - alphas_cumprod),
            "posterior_mean_coef2": (1.0 - alphas_cumprod_prev) * alphas.sqrt()
                                    / (1.0 - alphas_cumprod),
        }
        for name, value in coefficients.items():
            self.register_buffer(name, value.to(torch.float32), persistent=False)

    def _at(self, name: str, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return extract(getattr(self, name), t, x.dim()).to(x.dtype)

    # --- the forward process and its posterior ---

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor,
                 noise: torch.Tensor | None = None) -> torch.Tensor:
        """x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε: a draw from q(x_t | x_0) (eq. 4); t: int64 (B,)."""
        if noise is None:
            noise = torch.randn_like(x0)
        return (self._at("sqrt_alphas_cumprod", t, x0) * x0
                + self._at("sqrt_one_minus_alphas_cumprod", t, x0) * noise)

    def q_posterior(self, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and (clipped) log-variance of q(x_{t−1} | x_t, x_0) (eqs. 6–7)."""
        mean = (self._at("posterior_mean_coef1", t, xt) * x0
                + self._at("posterior_mean_coef2", t, xt) * xt)
        return (mean, self._at("posterior_variance", t, xt),
                self._at("posterior_log_variance_clipped", t, xt))

    def predict_x0_from_eps(self, xt: torch.Tensor, t: torch.Tensor,
                            eps: torch.Tensor) -> torch.Tensor:
        """x̂_0 = (x_t − √(1 − ᾱ_t) ε)/√ᾱ_t, written as √(1/ᾱ_t) x_t − √(1/ᾱ_t − 1) ε."""
        return (self._at("sqrt_recip_alphas_cumprod", t, xt) * xt
                - self._at("sqrt_recipm1_alphas_cumprod", t, xt) * eps)

    def predict_eps_from_x0(self, xt: torch.Tensor, t: torch.Tensor,
                            x0: torch.Tensor) -> torch.Tensor:
        """The ε that x̂_0 implies: (√(1/ᾱ_t) x_t − x̂_0)/√(1/ᾱ_t − 1) (after clipping x̂_0)."""
        return ((self._at("sqrt_recip_alphas_cumprod", t, xt) * xt - x0)
                / self._at("sqrt_recipm1_alphas_cumprod", t, xt))

    # --- training ---

    def drop_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """Replace each label by the null class `num_classes` with probability p_uncond."""
        drop = torch.rand(labels.shape, device=labels.device) < self.p_uncond
        return torch.where(drop, torch.full_like(labels, self.num_classes), labels)

    def forward(self, x0: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The simple ε-prediction loss (eq. 14) at uniformly drawn t, averaged over the batch."""
        if self.model is None:
            raise CnnkitError("GaussianDiffusion was built without a denoiser (model=None)")
        if labels is not None:
            if self.num_classes == 0:
                raise CnnkitError("labels given to an unconditional diffusion (num_classes=0)")
            labels = self.drop_labels(labels)
        t = torch.randint(0, self.num_timesteps, (len(x0),), device=x0.device)  # (B,)
        noise = torch.randn_like(x0)
        eps = self.model(self.q_sample(x0, t, noise), t, labels)
        return F.mse_loss(eps.float(), noise.float())


def build_process(config: dict, model: nn.Module | None) -> GaussianDiffusion:
    """The GaussianDiffusion a run used, from its config dict (as saved in the checkpoint),
    with `num_classes` of its data set."""
    betas = beta_schedule(config["schedule"], config["timesteps"])
    num_classes = config["num_classes"] if config["class_conditional"] else 0
    return GaussianDiffusion(model, betas, num_classes=num_classes, p_uncond=config["p_uncond"])
