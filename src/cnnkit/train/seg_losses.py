"""Segmentation losses: pixel-wise cross-entropy (class weights, void, per-pixel weights), soft
Dice, and the U-Net paper's border weight map for touching objects.

Logits are (B, K, H, W), targets int64 (B, H, W) with `ignore_index` on void pixels; every loss
skips void pixels entirely (no gradient, not in the normaliser).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

# The U-Net paper's values (Ronneberger et al. 2015, arXiv:1505.04597, §3): w0 = 10, σ ≈ 5 px.
W0, SIGMA = 10.0, 5.0
# The border term is dropped where it is below this (in loss-weight units): it lets each cell's
# distance transform stop a few σ beyond the cell instead of covering the whole image.
_NEGLIGIBLE = 1e-3


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, *,
                  class_weights: torch.Tensor | None = None, ignore_index: int = 255,
                  pixel_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted mean of −log softmax(logits)[target] over the labelled pixels.

    The weight of pixel x is class_weights[target(x)] · pixel_weights(x) (each 1 when not given),
    and the sum is divided by the total weight — torch's F.cross_entropy convention, which this
    equals without pixel_weights. With pixel_weights = unet_weight_map(...) it is the U-Net
    paper's energy (eq. 1), normalised. A batch with no labelled pixel gives 0, not NaN.
    """
    per_pixel = F.cross_entropy(logits, target, weight=class_weights, ignore_index=ignore_index,
                                reduction="none")  # (B, H, W), class weight included, 0 on void
    labelled = target != ignore_index
    weight = labelled.to(per_pixel.dtype)
    if class_weights is not None:
        weight = weight * class_weights.to(per_pixel.dtype)[target.masked_fill(~labelled, 0)]
    if pixel_weights is not None:
        per_pixel, weight = per_pixel * pixel_weights, weight * pixel_weights
    return per_pixel.sum() / weight.sum().clamp_min(torch.finfo(per_pixel.dtype).tiny)


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, *, ignore_index: int = 255,
                   eps: float = 1.0) -> torch.Tensor:
    """1 − mean over classes of the soft Dice coefficient of softmax(logits) and the one-hot
    target, over all labelled pixels of the batch.

    Dice_k = (2 Σ p_k g_k + eps) / (Σ p_k + Σ g_k + eps): the soft Dice of Milletari et al. 2016
    (V-Net, arXiv:1606.04797, eq. 1, with plain rather than squared sums), averaged over classes
    so that small classes count as much as large ones. `eps` smooths: a class absent from both
    target and prediction scores 1, not 0/0.
    """
    k = logits.shape[1]
    labelled = (target != ignore_index).unsqueeze(1)  # (B, 1, H, W)
    probs = logits.softmax(1) * labelled  # (B, K, H, W), void pixels zeroed
    onehot = F.one_hot(target.masked_fill(~labelled[:, 0], 0), k)  # (B, H, W, K)
    onehot = onehot.permute(0, 3, 1, 2).to(probs.dtype) * labelled  # (B, K, H, W)
    dims = (0, 2, 3)  # over the whole batch: a class missing from one image is not a 0/0
    overlap = (probs * onehot).sum(dims)
    total = probs.sum(dims) + onehot.sum(dims)
    return 1 - ((2 * overlap + eps) / (total + eps)).mean()


def unet_weight_map(mask, *, w0: float = W0, sigma: float = SIGMA, class_balance: bool = True,
                    foreground: int = 1, ignore_index: int = 255) -> np.ndarray:
    """The U-Net paper's per-pixel loss weights (Ronneberger et al. 2015, eq. 2), float32 (H, W):

        w(x) = w_c(x) + w0 · exp(−(d1(x) + d2(x))² / (2σ²))

    d1, d2: distances to the nearest and second-nearest object (a 4-connected component of class
    `foreground`, `skimage.measure.label`), from `scipy.ndimage.distance_transform_edt` per object.
    The border term is added on the background only: that is where the thin separations between
    touching cells lie (the paper's Fig. 3c-d); inside a cell d1 would be 0 and the term would
    blanket every cell near another. w_c balances the class frequencies of this mask (when
    class_balance): class k weighs N / (K · n_k), scikit-learn's "balanced" class weights, so that
    the pixels' mean w_c is 1. Void pixels weigh 0.

    A preprocessing step on one mask (H, W) of integer class indices (numpy or a CPU tensor).
    """
    from scipy import ndimage  # noqa: PLC0415 (imported on first use: scipy loads slowly)
    from skimage.measure import label  # noqa: PLC0415

    mask = mask.numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    labelled = mask != ignore_index
    weights = labelled.astype(np.float32)
    if class_balance and labelled.any():
        values, counts = np.unique(mask[labelled], return_counts=True)
        balanced = labelled.sum() / (len(values) * counts)
        weights[labelled] = balanced[np.searchsorted(values, mask[labelled])]
    cells = label(mask == foreground, connectivity=1)  # (H, W): 0 background, 1..n objects
    # Beyond `reach` px from a cell it cannot be d2 of a pixel whose term exceeds _NEGLIGIBLE:
    # d1 + d2 ≥ d2 > reach gives w0·exp(−reach²/2σ²) < _NEGLIGIBLE.
    reach = math.ceil(sigma * math.sqrt(2 * math.log(max(w0, _NEGLIGIBLE) / _NEGLIGIBLE)))
    d1 = np.full(mask.shape, np.inf)
    d2 = np.full(mask.shape, np.inf)
    height, width = mask.shape
    for i, box in enumerate(ndimage.find_objects(cells), 1):
        rows = slice(max(box[0].start - reach, 0), min(box[0].stop + reach, height))
        cols = slice(max(box[1].start - reach, 0), min(box[1].stop + reach, width))
        # The window holds all of cell i: exact distances to it within the window.
        d = ndimage.distance_transform_edt(cells[rows, cols] != i)
        near, second = d1[rows, cols], d2[rows, cols]  # views: updated in place
        second[:] = np.where(d < near, near, np.minimum(second, d))
        near[:] = np.minimum(near, d)
    border = w0 * np.exp(-((d1 + d2) ** 2) / (2 * sigma ** 2))  # 0 where d2 is inf (< 2 cells)
    background = labelled & (cells == 0)
    weights[background] += border[background].astype(np.float32)
    return weights
