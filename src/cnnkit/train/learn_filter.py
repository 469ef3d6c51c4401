"""The chapter's claim, shown: a convolutional layer *learns* an edge detector by gradient descent.

A single 3×3 conv (no bias) is fitted to reproduce a classic kernel's response on real images.
The problem is a linear least-squares fit, so gradient descent recovers the kernel itself.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def learn_kernel(images: torch.Tensor, target_kernel: torch.Tensor, *, steps: int = 400,
                 lr: float = 0.2, seed: int = 0) -> tuple[torch.Tensor, list[float]]:
    """Fit `nn.Conv2d(C, 1, k, bias=False)` so that conv(images) ≈ conv(images, target_kernel).

    images: (N, C, H, W) float in [0, 1]; target_kernel: (k, k), applied to every channel and summed
    (the chapter's channel rule). Returns the learned (C, k, k) kernel and the loss per step.
    Use grey images (C = 1) to recover the kernel itself: with correlated colour channels only the
    sum of the per-channel kernels is determined by the data.
    """
    channels, k = images.shape[1], target_kernel.shape[-1]
    # Removing each image's mean takes out the near-constant direction that makes this least-squares
    # problem ill-conditioned (gradient descent then needs ~100× fewer steps); the target is made
    # from the same centred images, so the kernel that fits is unchanged.
    images = images - images.mean(dim=(2, 3), keepdim=True)
    torch.manual_seed(seed)
    layer = nn.Conv2d(channels, 1, k, bias=False)  # random init, as any conv layer starts
    target_weight = target_kernel.expand(1, channels, k, k)  # (1, C, k, k)
    with torch.no_grad():
        target = F.conv2d(images, target_weight)  # (N, 1, H-k+1, W-k+1)
    optimizer = torch.optim.Adam(layer.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    losses = []
    for _ in range(steps):
        loss = F.mse_loss(layer(images), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    return layer.weight.detach()[0], losses  # (C, k, k)
