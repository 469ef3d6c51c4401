"""Segmentation losses against torch's cross-entropy, hand-made Dice cases, and the U-Net weight
map on a hand-made mask and against a whole-image distance transform per cell."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage
from skimage.measure import label

from cnnkit.train.seg_losses import cross_entropy, soft_dice_loss, unet_weight_map
from tests.conftest import DATASETS


@pytest.fixture
def batch():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 10, 12, generator=generator, dtype=torch.float64)
    target = torch.randint(0, 4, (3, 10, 12), generator=generator)
    return logits.requires_grad_(), target


def test_cross_entropy_is_torchs_in_the_plain_and_weighted_cases(batch):
    logits, target = batch
    assert torch.allclose(cross_entropy(logits, target), F.cross_entropy(logits, target))
    void = target.clone()
    void[:, :3] = 255
    weights = torch.tensor([0.5, 2.0, 1.0, 3.0], dtype=torch.float64)
    expected = F.cross_entropy(logits, void, weight=weights, ignore_index=255)
    assert torch.allclose(cross_entropy(logits, void, class_weights=weights), expected)
    ones = torch.ones(3, 10, 12, dtype=torch.float64)
    assert torch.allclose(cross_entropy(logits, void, class_weights=weights, pixel_weights=ones),
                          expected)
    # Void pixels get no gradient.
    cross_entropy(logits, void).backward()
    assert (logits.grad[:, :, :3] == 0).all() and (logits.grad[:, :, 3:] != 0).any()


def test_pixel_weights_give_a_weighted_mean(batch):
    logits, target = batch
    pixel = torch.rand(3, 10, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    nll = -logits.log_softmax(1).gather(1, target[:, None])[:, 0]  # (B, H, W)
    expected = (pixel * nll).sum() / pixel.sum()
    assert torch.allclose(cross_entropy(logits, target, pixel_weights=pixel), expected)
    # Weight 0 removes a pixel exactly as marking it void does.
    pixel[:, :, :4] = 0
    void = target.masked_fill(pixel == 0, 255)
    assert torch.allclose(cross_entropy(logits, target, pixel_weights=(pixel > 0).double()),
                          cross_entropy(logits, void))
    # A batch with nothing labelled: 0 and a finite (zero) gradient, not NaN.
    loss = cross_entropy(logits, torch.full_like(target, 255))
    loss.backward()
    assert loss.item() == 0 and torch.isfinite(logits.grad).all()


def test_soft_dice_of_perfect_and_wrong_predictions():
    target = torch.randint(0, 3, (2, 16, 16), generator=torch.Generator().manual_seed(2))
    perfect = 50.0 * F.one_hot(target, 3).permute(0, 3, 1, 2).float()  # softmax ≈ one-hot
    assert soft_dice_loss(perfect, target) < 1e-3
    wrong = perfect.roll(1, dims=1)  # every pixel predicts another class
    assert soft_dice_loss(wrong, target) > 0.99
    # Void pixels do not count: predicting anything there changes nothing.
    void = target.clone()
    void[:, :8] = 255
    noisy = perfect.clone()
    noisy[:, :, :8] = torch.randn(2, 3, 8, 16)
    assert torch.allclose(soft_dice_loss(noisy, void), soft_dice_loss(perfect, void))
    # The formula on a tiny case: probabilities (0.25, 0.75) for truth class 1 at one pixel.
    logits = torch.log(torch.tensor([0.25, 0.75])).view(1, 2, 1, 1)
    dice0, dice1 = (0 + 1) / (0.25 + 0 + 1), (2 * 0.75 + 1) / (0.75 + 1 + 1)
    expected = 1 - (dice0 + dice1) / 2
    assert math.isclose(soft_dice_loss(logits, torch.tensor([[[1]]])).item(), expected,
                        rel_tol=1e-6)


def _two_touching_cells() -> np.ndarray:
    """64×96 membrane (0) with two 20×20 cells (1) one membrane pixel apart at column 30."""
    mask = np.zeros((64, 96), dtype=np.uint8)
    mask[10:30, 10:30] = 1
    mask[10:30, 31:51] = 1
    return mask


def test_weight_map_is_w0_plus_wc_between_touching_cells_and_wc_far_away():
    mask = _two_touching_cells()
    weights = unet_weight_map(mask)
    assert weights.dtype == np.float32 and weights.shape == mask.shape
    n, n_cell = mask.size, int(mask.sum())
    wc_membrane, wc_cell = n / (2 * (n - n_cell)), n / (2 * n_cell)  # "balanced": N / (K n_k)
    # Between the cells d1 = d2 = 1 px: w = w_c + w0·exp(−4/(2·25)) ≈ w_c + 9.23.
    gap = weights[20, 30]
    assert math.isclose(gap, wc_membrane + 10 * math.exp(-4 / 50), rel_tol=1e-6)
    assert abs(gap - (10 + wc_membrane)) < 0.8
    assert math.isclose(weights[60, 90], wc_membrane, abs_tol=1e-3)  # ≥ 40 px from both cells
    assert np.allclose(weights[mask == 1], wc_cell)  # no border term inside cells
    # Balanced class weights average 1 over the pixels.
    plain = unet_weight_map(mask, w0=0.0)
    assert math.isclose(plain.mean(), 1.0, rel_tol=1e-6)
    # Without balancing w_c = 1; void pixels weigh nothing.
    mask[0, :] = 255
    weights = unet_weight_map(mask, class_balance=False)
    assert (weights[0] == 0).all() and math.isclose(weights[60, 90], 1.0, abs_tol=1e-3)
    assert math.isclose(weights[20, 30], 1 + 10 * math.exp(-4 / 50), rel_tol=1e-6)


def test_weight_map_matches_a_whole_image_distance_transform_per_cell():
    """The windowed distances against the plain definition on a real ISBI mask (many cells)."""
    mask = (np.asarray(Image.open(DATASETS / "isbi2012-membrane/train/label/7.png"))[:160, :200]
            == 255).astype(np.int64)
    cells = label(mask == 1, connectivity=1)
    distances = np.stack([ndimage.distance_transform_edt(cells != i)
                          for i in range(1, cells.max() + 1)])  # (n, H, W)
    distances.sort(axis=0)
    border = 10 * np.exp(-((distances[0] + distances[1]) ** 2) / (2 * 5 ** 2))
    expected = unet_weight_map(mask, w0=0.0) + np.where(cells == 0, border, 0)
    assert cells.max() > 10
    assert np.abs(unet_weight_map(torch.from_numpy(mask)) - expected).max() < 1e-3
