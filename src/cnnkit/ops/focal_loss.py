"""Sigmoid focal loss (Lin et al. 2017, "Focal Loss for Dense Object Detection",
https://arxiv.org/abs/1708.02002), torchvision's `ops.sigmoid_focal_loss`.

A one-stage detector scores ~100k anchors per image, nearly all of them easy background; plain
cross-entropy is then dominated by the sum of their many small losses. The focal term
(1 - p_t)^γ shrinks the loss of well-classified examples (p_t → 1) so that training concentrates
on the hard ones, and α_t balances the two classes:

    FL(p_t) = -α_t (1 - p_t)^γ log(p_t),   p_t = p if y = 1 else 1 - p,
                                             α_t = α if y = 1 else 1 - α.

γ = 0 and α < 0 (no weighting) give plain binary cross-entropy with logits.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from cnnkit.utils import CnnkitError

__all__ = ["sigmoid_focal_loss"]


def sigmoid_focal_loss(inputs: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25,
                       gamma: float = 2, reduction: str = "none") -> torch.Tensor:
    """Focal loss of logits `inputs` against binary (or soft) `targets` of the same shape.

    `alpha` in [0, 1] weighs the positives (α) against the negatives (1 - α); a negative value
    turns the weighting off. `reduction`: 'none' (elementwise), 'mean' or 'sum'.
    """
    if reduction not in ("none", "mean", "sum"):
        raise CnnkitError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
    if inputs.shape != targets.shape:
        raise CnnkitError(f"inputs {tuple(inputs.shape)} and targets {tuple(targets.shape)} "
                          f"must have the same shape")
    p = torch.sigmoid(inputs)
    # BCE from the logits, not from log(p): stable where sigmoid saturates to 0 or 1
    ce_loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** gamma)
    if alpha >= 0:
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
        loss = alpha_t * loss
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss
