"""GaussianDiffusion: forward marginal, posterior (Ho et al. 2020 eqs. 4, 6, 7), the loss."""
import math

import pytest
import torch
from torch import nn

from cnnkit.diffusion import GaussianDiffusion, cosine_beta_schedule, linear_beta_schedule
from cnnkit.utils import CnnkitError


def alpha_bars_64(betas: torch.Tensor) -> list[float]:
    """ᾱ_t = Π_{s ≤ t} (1 − β_s), by a plain float64 Python loop."""
    out, prod = [], 1.0
    for beta in betas.tolist():
        prod *= 1.0 - beta
        out.append(prod)
    return out


@pytest.mark.parametrize("t", [0, 10, 500, 999])
def test_q_sample_marginal_mean_and_variance(t):
    process = GaussianDiffusion(None, linear_beta_schedule())
    torch.manual_seed(0)
    x0 = torch.rand(1, 1, 4, 4) * 2 - 1  # one fixed data point
    n = 20000
    t_batch = torch.full((n,), t)
    xt = process.q_sample(x0.expand(n, -1, -1, -1), t_batch)  # (n, 1, 4, 4)
    alpha_bar = alpha_bars_64(linear_beta_schedule())[t]
    mean, var = xt.double().mean(0), xt.double().var(0)
    # 5 standard errors: mean's is √((1 − ᾱ)/n), the variance's √(2/n)·(1 − ᾱ)
    assert torch.allclose(mean, math.sqrt(alpha_bar) * x0[0].double(),
                          atol=5 * math.sqrt((1 - alpha_bar) / n))
    assert torch.allclose(var, torch.full_like(var, 1 - alpha_bar),
                          atol=5 * math.sqrt(2 / n) * (1 - alpha_bar))


def test_buffers_are_float32_from_float64_arithmetic():
    betas = linear_beta_schedule()
    process = GaussianDiffusion(None, betas)
    expected = torch.tensor(alpha_bars_64(betas), dtype=torch.float64)
    assert process.alphas_cumprod.dtype == torch.float32
    assert torch.equal(process.alphas_cumprod, expected.float())  # rounded once, at the end
    assert torch.equal(process.sqrt_one_minus_alphas_cumprod, (1 - expected).sqrt().float())
    assert "alphas_cumprod" in dict(process.named_buffers())


@pytest.mark.parametrize("schedule", [linear_beta_schedule, cosine_beta_schedule])
def test_posterior_matches_closed_form(schedule):
    betas = schedule(1000)
    process = GaussianDiffusion(None, betas)
    alpha_bar = alpha_bars_64(betas)
    torch.manual_seed(1)
    t = torch.tensor([0, 1, 37, 500, 998, 999])
    x0, xt = torch.randn(6, 1, 3, 3).double(), torch.randn(6, 1, 3, 3).double()
    mean, var, logvar = process.q_posterior(x0.float(), xt.float(), t)
    for i, step in enumerate(t.tolist()):
        beta, ab = betas[step].item(), alpha_bar[step]
        ab_prev = alpha_bar[step - 1] if step > 0 else 1.0
        # Ho et al. eq. 7
        mu = (math.sqrt(ab_prev) * beta / (1 - ab)) * x0[i] + \
             (math.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab)) * xt[i]
        beta_tilde = (1 - ab_prev) / (1 - ab) * beta
        # Second oracle: condition the joint Gaussian of (x_{t−1}, x_t) given x_0 directly.
        cov = math.sqrt(1 - beta) * (1 - ab_prev)  # Cov(x_{t−1}, x_t)
        mu_bayes = math.sqrt(ab_prev) * x0[i] + cov / (1 - ab) * (xt[i] - math.sqrt(ab) * x0[i])
        var_bayes = (1 - ab_prev) - cov**2 / (1 - ab)
        assert torch.allclose(mu, mu_bayes, atol=1e-12)
        assert math.isclose(beta_tilde, var_bayes, rel_tol=1e-9, abs_tol=1e-15)
        assert torch.allclose(mean[i].double(), mu, atol=2e-5, rtol=1e-5)
        assert math.isclose(var[i].item(), beta_tilde, rel_tol=1e-5, abs_tol=1e-12)
        beta_tilde_1 = (1 - alpha_bar[0]) / (1 - alpha_bar[1]) * betas[1].item()
        clipped = beta_tilde if step > 0 else beta_tilde_1  # log β̃_0 = log 0 is clipped
        assert math.isclose(logvar[i].item(), math.log(clipped), rel_tol=1e-5)


def test_predict_x0_inverts_q_sample():
    process = GaussianDiffusion(None, linear_beta_schedule())
    x0, noise = torch.rand(5, 1, 6, 6) * 2 - 1, torch.randn(5, 1, 6, 6)
    t = torch.tensor([0, 100, 400, 800, 999])
    xt = process.q_sample(x0, t, noise)
    assert torch.allclose(process.predict_x0_from_eps(xt, t, noise), x0, atol=2e-4)
    assert torch.allclose(process.predict_eps_from_x0(xt, t, x0), noise, atol=1e-3)


class PointEps(nn.Module):
    """The true ε for data that is the single point x*: (x_t − √ᾱ_t x*)/√(1 − ᾱ_t)."""

    def __init__(self, process, x_star):
        super().__init__()
        self.sqrt_ab, self.sqrt_1mab = (process.sqrt_alphas_cumprod,
                                        process.sqrt_one_minus_alphas_cumprod)
        self.x_star, self.seen_labels = x_star, []

    def forward(self, x, t, labels=None):
        if labels is not None:
            self.seen_labels.append(labels.clone())
        a, s = self.sqrt_ab[t].view(-1, 1, 1, 1), self.sqrt_1mab[t].view(-1, 1, 1, 1)
        return (x - a * self.x_star) / s


class ZeroEps(nn.Module):
    def forward(self, x, t, labels=None):
        return torch.zeros_like(x)


def test_loss_is_zero_for_the_true_eps_and_positive_otherwise():
    process = GaussianDiffusion(None, linear_beta_schedule())
    x_star = torch.rand(1, 1, 4, 4) * 2 - 1
    process.model = PointEps(process, x_star)
    torch.manual_seed(0)
    assert process(x_star.expand(64, -1, -1, -1)).item() < 1e-6  # same t for q_sample and model
    process.model = ZeroEps()
    assert 0.7 < process(x_star.expand(256, -1, -1, -1)).item() < 1.3  # E‖ε‖² = 1


def test_label_dropout_uses_the_null_class_at_rate_p_uncond():
    process = GaussianDiffusion(None, linear_beta_schedule(), num_classes=10, p_uncond=0.1)
    model = PointEps(process, torch.zeros(1, 1, 2, 2))
    process.model = model
    torch.manual_seed(0)
    labels = torch.randint(0, 10, (20000,))
    process(torch.zeros(20000, 1, 2, 2), labels)
    seen = model.seen_labels[0]
    dropped = seen == 10
    assert abs(dropped.float().mean().item() - 0.1) < 5 * math.sqrt(0.1 * 0.9 / 20000)
    assert torch.equal(seen[~dropped], labels[~dropped])  # the others are untouched


def test_process_errors():
    with pytest.raises(CnnkitError, match="betas"):
        GaussianDiffusion(None, torch.tensor([0.1, 1.5]))
    process = GaussianDiffusion(None, linear_beta_schedule(10))
    with pytest.raises(CnnkitError, match="without a denoiser"):
        process(torch.zeros(1, 1, 2, 2))
    process.model = ZeroEps()
    with pytest.raises(CnnkitError, match="unconditional"):
        process(torch.zeros(1, 1, 2, 2), torch.tensor([1]))
