"""cnnkit.ops.sigmoid_focal_loss against FL = -α_t (1 - p_t)^γ log p_t written out in float64."""
import math

import pytest
import torch
import torch.nn.functional as F

from cnnkit.ops.focal_loss import sigmoid_focal_loss
from cnnkit.utils import CnnkitError


def focal_reference(logits, targets, alpha, gamma):
    """The paper's formula element by element for binary targets, in Python floats (float64)."""
    out = []
    for x, y in zip(logits.flatten().tolist(), targets.flatten().tolist()):
        p = 1 / (1 + math.exp(-x))
        p_t = p if y == 1.0 else 1 - p
        a_t = 1.0 if alpha < 0 else (alpha if y == 1.0 else 1 - alpha)
        out.append(-a_t * (1 - p_t) ** gamma * math.log(p_t))
    return torch.tensor(out, dtype=torch.float64).reshape(logits.shape)


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (0.5, 0.0), (0.75, 1.0), (-1.0, 2.0),
                                         (0.25, 0.5)])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_matches_formula(alpha, gamma, reduction):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 5, generator=gen, dtype=torch.float64) * 3
    targets = (torch.rand(6, 5, generator=gen, dtype=torch.float64) > 0.7).double()
    ref = focal_reference(logits, targets, alpha, gamma)
    ref = {"none": ref, "mean": ref.mean(), "sum": ref.sum()}[reduction]
    got = sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=gamma, reduction=reduction)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


def test_float32_close_to_float64():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(100, generator=gen, dtype=torch.float64) * 4
    targets = (torch.rand(100, generator=gen) > 0.5).double()
    got = sigmoid_focal_loss(logits.float(), targets.float())
    torch.testing.assert_close(got.double(), focal_reference(logits, targets, 0.25, 2.0),
                               rtol=1e-5, atol=1e-6)


def test_gamma0_no_alpha_is_bce():
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(4, 7, generator=gen) * 5
    targets = (torch.rand(4, 7, generator=gen) > 0.5).float()
    for reduction in ("none", "mean", "sum"):
        torch.testing.assert_close(
            sigmoid_focal_loss(logits, targets, alpha=-1, gamma=0, reduction=reduction),
            F.binary_cross_entropy_with_logits(logits, targets, reduction=reduction))


def test_easy_examples_down_weighted():
    # a confident correct prediction loses far more of its loss than a wrong one (the point)
    logits = torch.tensor([4.0, -4.0])     # p = 0.982: right for y = 1, wrong for y = 1
    targets = torch.tensor([1.0, 1.0])
    ratio = sigmoid_focal_loss(logits, targets, alpha=-1) / F.binary_cross_entropy_with_logits(
        logits, targets, reduction="none")
    assert ratio[0] < 1e-3 and ratio[1] > 0.96


def test_extreme_logits_finite():
    logits = torch.tensor([-200.0, 200.0, -200.0, 200.0])
    targets = torch.tensor([0.0, 1.0, 1.0, 0.0])
    loss = sigmoid_focal_loss(logits, targets)
    assert torch.isfinite(loss).all()
    # confidently wrong: (1 - p_t)^γ = 1, so α_t · 200 (α_t = 0.25 positive, 0.75 negative)
    torch.testing.assert_close(loss, torch.tensor([0.0, 0.0, 50.0, 150.0]))


def test_gradcheck():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    targets = (torch.rand(3, 4, generator=gen, dtype=torch.float64) > 0.5).double()
    for alpha, gamma in ((0.25, 2.0), (-1.0, 1.5)):
        assert torch.autograd.gradcheck(
            lambda x: sigmoid_focal_loss(x, targets, alpha=alpha, gamma=gamma, reduction="sum"),
            (logits,))


def test_bad_reduction_and_shape():
    x = torch.zeros(3)
    with pytest.raises(CnnkitError, match="reduction"):
        sigmoid_focal_loss(x, x, reduction="avg")
    with pytest.raises(CnnkitError, match="same shape"):
        sigmoid_focal_loss(x, torch.zeros(4))
