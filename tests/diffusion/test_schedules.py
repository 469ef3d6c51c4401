"""Noise schedules against their papers' closed forms."""
import math

import pytest
import torch

from cnnkit.diffusion.schedules import beta_schedule, cosine_beta_schedule, linear_beta_schedule
from cnnkit.utils import CnnkitError


def test_linear_schedule_endpoints_exact_and_float64():
    betas = linear_beta_schedule()  # Ho et al. 2020 §4: T = 1000, β_1 = 1e-4, β_T = 0.02
    assert betas.dtype == torch.float64 and betas.shape == (1000,)
    assert betas[0].item() == 1e-4 and betas[-1].item() == 0.02
    steps = betas.diff()
    assert torch.allclose(steps, torch.full_like(steps, (0.02 - 1e-4) / 999), rtol=0, atol=1e-15)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_alpha_bar_decreases_from_one_towards_zero(name):
    betas = beta_schedule(name, 1000)
    alpha_bar = torch.cumprod(1 - betas, 0)
    assert (alpha_bar.diff() < 0).all()
    assert 0.99 < alpha_bar[0] < 1
    assert alpha_bar[-1] < 1e-4  # linear: ~4e-5, cosine: ~0


def test_cosine_schedule_matches_nichol_dhariwal_eq17():
    T, s = 1000, 0.008
    betas = cosine_beta_schedule(T, s)
    alpha_bar = torch.cumprod(1 - betas, 0)

    def f(t):
        return math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2

    expected = torch.tensor([f(t) / f(0) for t in range(1, T + 1)], dtype=torch.float64)
    unclipped = betas < 0.999  # only the last β reaches the clip
    assert unclipped[:-1].all() and betas[-1] == 0.999
    assert torch.allclose(alpha_bar[unclipped], expected[unclipped], rtol=1e-10, atol=1e-14)
    assert alpha_bar[-1] < 1e-7  # ᾱ_T ≈ 0: x_T is pure noise


def test_unknown_schedule_and_too_few_steps_are_one_line_errors():
    with pytest.raises(CnnkitError, match="did you mean cosine"):
        beta_schedule("cosin", 10)
    with pytest.raises(CnnkitError, match="at least 2"):
        linear_beta_schedule(1)
