"""DDPM, DDIM and DPM-Solver++: DDIM(η = 1, T steps) ≡ DDPM, DPM-Solver++(1) ≡ DDIM(η = 0), the
second order's accuracy on Gaussian data, determinism, perfect denoiser, guidance."""
import pytest
import torch
from torch import nn

from cnnkit.diffusion import (GaussianDiffusion, ddim_sample, ddim_step, ddpm_sample, ddpm_step,
                              dpm_solver_sample, guided_eps, linear_beta_schedule)
from cnnkit.diffusion.samplers import _log_snr, ddim_timesteps, logsnr_timesteps
from cnnkit.utils import CnnkitError
from tests.diffusion.test_process import PointEps


class ToyEps(nn.Module):
    """A small fixed network with a real dependence on x, t and the class (last row = null)."""

    def __init__(self, num_classes: int = 0):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 1, 3, padding=1)
        self.class_emb = nn.Embedding(num_classes + 1, 1)

    def forward(self, x, t, labels=None):
        out = torch.tanh(self.conv(x)) + 0.3 * torch.sin(t.float() / 7).view(-1, 1, 1, 1)
        if labels is not None:
            out = out + self.class_emb(labels).view(-1, 1, 1, 1)
        return out


def test_ddim_eta1_step_equals_ddpm_step_exactly_on_the_formula():
    process = GaussianDiffusion(None, linear_beta_schedule())
    torch.manual_seed(0)
    xt, eps = torch.randn(8, 1, 5, 5), torch.randn(8, 1, 5, 5)
    t = torch.tensor([0, 1, 2, 50, 300, 600, 998, 999])
    mean_ddpm, std_ddpm = ddpm_step(process, xt, t, eps)
    mean_ddim, std_ddim = ddim_step(process, xt, t, t - 1, eps, eta=1.0)
    assert torch.allclose(mean_ddim, mean_ddpm, atol=1e-5, rtol=1e-5)
    assert torch.allclose(std_ddim.expand_as(std_ddpm).flatten(), std_ddpm.flatten(), rtol=1e-4)
    assert std_ddpm[0].item() == 0 and std_ddim[0].item() == 0  # the last step adds no noise
    # the DDPM variance is the posterior's β̃_t
    assert torch.allclose(std_ddpm[1:].flatten() ** 2, process.posterior_variance[t[1:]], rtol=1e-4)


def test_ddim_eta1_with_T_steps_walks_the_ddpm_chain():
    process = GaussianDiffusion(None, linear_beta_schedule(20, 1e-3, 0.3))  # tiny T
    model = ToyEps()
    shape = (16, 1, 6, 6)
    ddpm = ddpm_sample(process, model, shape, generator=torch.Generator().manual_seed(3))
    ddim = ddim_sample(process, model, shape, generator=torch.Generator().manual_seed(3),
                       steps=20, eta=1.0)
    other = ddpm_sample(process, model, shape, generator=torch.Generator().manual_seed(4))
    assert torch.allclose(ddim, ddpm, atol=1e-4)
    assert not torch.allclose(other, ddpm, atol=1e-2)  # the noise draws do matter


def test_sample_variance_for_gaussian_data_follows_the_step_recursion():
    """Statistically: for data N(0, s²) the true ε-predictor is linear,
    ε(x_t, t) = √(1 − ᾱ_t) x_t / (ᾱ_t s² + 1 − ᾱ_t), so each DDPM step is x_{t−1} = a_t x_t + σ_t z
    and Var x_0 follows v_{t−1} = a_t² v_t + β̃_t from v_T = 1 (here in float64, from eq. 7).
    DDPM and DDIM(η = 1, T steps) samples must both have that variance."""
    betas = linear_beta_schedule(50, 1e-3, 0.2)
    process = GaussianDiffusion(None, betas)
    s2 = 0.05

    class GaussianEps(nn.Module):
        def forward(self, x, t, labels=None):
            ab = process.alphas_cumprod[t].view(-1, 1, 1, 1)
            return (1 - ab).sqrt() * x / (ab * s2 + 1 - ab)

    v, ab_all = 1.0, torch.cumprod(1 - betas, 0).tolist()
    for t in reversed(range(50)):
        beta, ab = betas[t].item(), ab_all[t]
        ab_prev = ab_all[t - 1] if t > 0 else 1.0
        c = (1 - ab) ** 0.5 / (ab * s2 + 1 - ab)
        k = (1 - (1 - ab) ** 0.5 * c) / ab**0.5  # x̂_0 = k·x_t
        a = ab_prev**0.5 * beta / (1 - ab) * k + (1 - beta) ** 0.5 * (1 - ab_prev) / (1 - ab)
        v = a * a * v + (1 - ab_prev) / (1 - ab) * beta
    assert abs(v / s2 - 1) > 0.1  # β̃ under-disperses at T = 50: the check below has teeth

    shape = (4000, 1, 2, 2)
    ddpm = ddpm_sample(process, GaussianEps(), shape, generator=torch.Generator().manual_seed(0))
    ddim = ddim_sample(process, GaussianEps(), shape, generator=torch.Generator().manual_seed(1),
                       steps=50, eta=1.0)
    for samples in (ddpm, ddim):
        assert abs(samples.double().var().item() / v - 1) < 0.06  # 16,000 values: σ ≈ 1.1%
        assert abs(samples.double().mean().item()) < 5 * (v / 16000) ** 0.5


def test_ddim_eta0_is_deterministic_given_x_T():
    process = GaussianDiffusion(None, linear_beta_schedule(100))
    model = ToyEps()
    x_T = torch.randn(4, 1, 6, 6)
    a = ddim_sample(process, model, x_T.shape, noise=x_T, steps=10,
                    generator=torch.Generator().manual_seed(0))
    b = ddim_sample(process, model, x_T.shape, noise=x_T, steps=10,
                    generator=torch.Generator().manual_seed(99))
    c = ddim_sample(process, model, x_T.shape, noise=x_T, steps=10, eta=1.0,
                    generator=torch.Generator().manual_seed(99))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c, atol=1e-3)


@pytest.mark.parametrize("steps", [1, 10, 50])
def test_perfect_eps_predictor_makes_ddim_recover_the_data_point(steps):
    process = GaussianDiffusion(None, linear_beta_schedule())
    torch.manual_seed(0)
    x_star = torch.rand(1, 1, 5, 5) * 1.8 - 0.9
    out = ddim_sample(process, PointEps(process, x_star), (3, 1, 5, 5), steps=steps,
                      generator=torch.Generator().manual_seed(0))
    assert (out - x_star).abs().max().item() < 1e-4


def test_perfect_eps_predictor_makes_ddpm_recover_the_data_point():
    process = GaussianDiffusion(None, linear_beta_schedule())
    x_star = torch.rand(1, 1, 3, 3) * 1.8 - 0.9
    out = ddpm_sample(process, PointEps(process, x_star), (2, 1, 3, 3),
                      generator=torch.Generator().manual_seed(0))
    assert (out - x_star).abs().max().item() < 1e-4


def test_guidance_scale_one_is_conditional_zero_is_unconditional():
    process = GaussianDiffusion(None, linear_beta_schedule(10), num_classes=3)
    model = ToyEps(num_classes=3)
    x, t = torch.randn(4, 1, 5, 5), torch.tensor([0, 3, 5, 9])
    labels, null = torch.tensor([0, 1, 2, 1]), torch.full((4,), 3)
    cond, uncond = model(x, t, labels), model(x, t, null)
    assert not torch.allclose(cond, uncond)
    assert torch.allclose(guided_eps(process, model, x, t, labels, 1.0), cond)
    assert torch.allclose(guided_eps(process, model, x, t, labels, 0.0), uncond, atol=1e-6)
    assert torch.allclose(guided_eps(process, model, x, t, labels, 2.5),
                          uncond + 2.5 * (cond - uncond), atol=1e-5)


def test_guided_sampling_runs_and_labels_are_checked():
    process = GaussianDiffusion(None, linear_beta_schedule(10), num_classes=3)
    model = ToyEps(num_classes=3)
    out = ddim_sample(process, model, (3, 1, 4, 4), labels=torch.tensor([0, 1, 2]), guidance=2.0,
                      steps=5)
    assert out.shape == (3, 1, 4, 4) and torch.isfinite(out).all()
    with pytest.raises(CnnkitError, match="0..2"):
        ddim_sample(process, model, (2, 1, 4, 4), labels=3, steps=5)
    with pytest.raises(CnnkitError, match="needs class labels"):
        ddim_sample(process, model, (2, 1, 4, 4), guidance=2.0, steps=5)
    unconditional = GaussianDiffusion(None, linear_beta_schedule(10))
    with pytest.raises(CnnkitError, match="unconditional"):
        ddpm_sample(unconditional, ToyEps(), (2, 1, 4, 4), labels=1)
    with pytest.raises(CnnkitError, match="class-conditional"):
        ddpm_sample(unconditional, ToyEps(), (2, 1, 4, 4), guidance=3.0)
    with pytest.raises(CnnkitError, match="1..10"):
        ddim_sample(unconditional, ToyEps(), (2, 1, 4, 4), steps=11)


def test_ddim_timesteps_span_T_minus_1_to_0():
    assert ddim_timesteps(1000, 50)[0] == 999 and ddim_timesteps(1000, 50)[-1] == 0
    assert ddim_timesteps(10, 10) == list(range(9, -1, -1))
    assert len(set(ddim_timesteps(1000, 50))) == 50


def test_dpm_solver_first_order_is_ddim_eta0():
    """DPM-Solver++(1)'s update (σ'/σ) x − α'(e^{−h} − 1) x̂_0 is DDIM's √ᾱ' x̂_0 + σ' ε̂: the
    same chain as DDIM steps over the solver's (log-SNR) timesteps."""
    process = GaussianDiffusion(None, linear_beta_schedule(200))
    x_T = torch.randn(3, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    timesteps = logsnr_timesteps(_log_snr(process)[0], 12)
    x = x_T
    for t_now, t_prev in zip(timesteps, timesteps[1:] + [-1]):
        t = torch.full((3,), t_now)
        x, _ = ddim_step(process, x, t, torch.full_like(t, t_prev), ToyEps()(x, t), eta=0.0)
    first = dpm_solver_sample(process, ToyEps(), x_T.shape, noise=x_T, steps=12, order=1)
    second = dpm_solver_sample(process, ToyEps(), x_T.shape, noise=x_T, steps=12)
    torch.testing.assert_close(first, x, atol=2e-5, rtol=1e-5)
    assert (second - x).abs().max() > 1e-3  # the second order is another method


def test_dpm_solver_second_order_solves_the_gaussian_flow_ode_better_than_ddim():
    """For data N(μ, s²) the optimal ε is linear in x_t and the probability-flow ODE keeps
    (x_t − α_t μ)/√(α_t² s² + σ_t²) constant, so x_0 = μ + s (x_T − α_T μ)/√(α_T² s² + σ_T²)
    exactly. DPM-Solver++(2M) must land much closer to it than its first order (DDIM) and
    converge at the second order's rate."""
    process = GaussianDiffusion(None, linear_beta_schedule(1000))
    mu, s2 = 0.2, 0.09
    alpha_bar = process.alphas_cumprod.double()

    class GaussianEps(nn.Module):
        def forward(self, x, t, labels=None):
            ab = alpha_bar[t].view(-1, 1, 1, 1)
            return ((1 - ab).sqrt() * (x - ab.sqrt() * mu) / (ab * s2 + 1 - ab)).float()

    x_T = torch.randn(64, 1, 4, 4, generator=torch.Generator().manual_seed(0)).clamp(-2.5, 2.5)
    ab_T = alpha_bar[-1].item()
    exact = mu + s2**0.5 * (x_T.double() - ab_T**0.5 * mu) / (ab_T * s2 + 1 - ab_T) ** 0.5
    error = {}
    for order in (1, 2):
        for steps in (10, 20, 80):
            out = dpm_solver_sample(process, GaussianEps(), x_T.shape, noise=x_T, steps=steps,
                                    order=order)
            error[order, steps] = (out.double() - exact).abs().max().item()
    assert error[2, 10] < error[1, 10] / 4, error
    # 4× the steps: the first order's error falls about 4×, the second's about 16×
    assert error[1, 20] / error[1, 80] < 6 < 10 < error[2, 20] / error[2, 80], error


@pytest.mark.parametrize("steps", [1, 5, 20])
def test_perfect_eps_predictor_makes_dpm_solver_recover_the_data_point(steps):
    process = GaussianDiffusion(None, linear_beta_schedule())
    x_star = torch.rand(1, 1, 5, 5, generator=torch.Generator().manual_seed(0)) * 1.8 - 0.9
    out = dpm_solver_sample(process, PointEps(process, x_star), (3, 1, 5, 5), steps=steps,
                            generator=torch.Generator().manual_seed(0))
    assert (out - x_star).abs().max().item() < 1e-4


def test_dpm_solver_guidance_and_bad_order():
    process = GaussianDiffusion(None, linear_beta_schedule(100), num_classes=3)
    model = ToyEps(num_classes=3)
    x_T = torch.randn(2, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    plain = dpm_solver_sample(process, model, x_T.shape, noise=x_T, labels=1, steps=8)
    guided = dpm_solver_sample(process, model, x_T.shape, noise=x_T, labels=1, steps=8,
                               guidance=3.0)
    assert plain.shape == x_T.shape and not torch.allclose(plain, guided)
    with pytest.raises(CnnkitError, match="order must be 1 or 2"):
        dpm_solver_sample(process, model, x_T.shape, order=3)
    with pytest.raises(CnnkitError, match="class labels must be in"):
        dpm_solver_sample(process, model, x_T.shape, labels=5)
