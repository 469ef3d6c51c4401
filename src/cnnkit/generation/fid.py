"""Judging generated images with a cnnkit classifier: FID in its feature space, conditional
accuracy.

FID (Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
Equilibrium", https://arxiv.org/abs/1706.08500) fits a Gaussian to the features of each image set
and measures the Fréchet distance between the two:
    ‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2 (Σ₁ Σ₂)^½).
The original uses Inception-v3 pool features of ImageNet photos; for digits that network is both
unavailable here and the wrong judge, so cnnkit uses a classifier trained on the same data set.
The features are the input of the classifier's last nn.Linear; for the chapter's LeNet that is
the 500-d fc1 activation after its ReLU (`relu3`). Numbers are therefore comparable only between
runs judged by the same classifier checkpoint and at the same n (FID is biased upward at small n),
which is why `cnnkit generate-eval` prints the real-vs-real floor at the same n beside it.

KID (Bińkowski et al. 2018, "Demystifying MMD GANs", https://arxiv.org/abs/1801.01401) is the
unbiased estimate of the squared MMD with the cubic kernel k(x, y) = (xᵀy/d + 1)³ in the same
features: its expectation does not depend on n, it is ≈ 0 (and may be negative) for two samples of
one distribution, so it stays meaningful where FID's bias dominates.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sklearn.metrics.pairwise import polynomial_kernel

from cnnkit.models._weights import classifier_prefix
from cnnkit.inference.load import load_model
from cnnkit.utils import CnnkitError


@dataclass
class Classifier:
    """A trained classifier with what it needs to see images as in training."""

    model: nn.Module
    mean: tuple[float, ...]  # per-channel normalisation on the 0..1 scale
    std: tuple[float, ...]
    image_shape: tuple[int, int, int]  # (C, H, W) it was trained on
    classes: list[str]
    dataset: str = ""
    data_dir: str = "~/.cache/cnnkit"


def load_classifier(path: str | Path) -> Classifier:
    """A `cnnkit train` checkpoint (file or run folder) as a Classifier in eval mode."""
    loaded = load_model(path, command="`cnnkit generate-eval --classifier`")
    return Classifier(loaded.model, loaded.mean, loaded.std, loaded.image_shape, loaded.classes,
                      loaded.config.get("dataset", ""),
                      loaded.config.get("data_dir", "~/.cache/cnnkit"))


def check_images(classifier: Classifier, images: torch.Tensor, what: str = "images") -> None:
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
        got = (f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor)
               else type(images).__name__)
        raise CnnkitError(f"{what} must be a uint8 (N, C, H, W) tensor, got {got}")
    if tuple(images.shape[1:]) != tuple(classifier.image_shape):
        raise CnnkitError(f"{what} are {tuple(images.shape[1:])} but the classifier was trained on "
                          f"{tuple(classifier.image_shape)} (C, H, W) images")


@torch.inference_mode()
def _forward(classifier: Classifier, images: torch.Tensor, batch_size: int = 500):
    """(features float64 (N, D), predicted classes int64 (N,)) of uint8 images, in batches."""
    check_images(classifier, images)
    model = classifier.model.eval()
    head = model.get_submodule(classifier_prefix(model))
    captured = []
    # The head's input is the penultimate activation: for LeNet, relu(fc1(x)), 500-d.
    hook = head.register_forward_pre_hook(lambda _m, args: captured.append(args[0].flatten(1)))
    scale = 1.0 / (255.0 * torch.tensor(classifier.std)).view(1, -1, 1, 1)  # (1, C, 1, 1)
    shift = (-torch.tensor(classifier.mean) / torch.tensor(classifier.std)).view(1, -1, 1, 1)
    preds = []
    try:
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size].float() * scale + shift  # (b, C, H, W)
            preds.append(model(x).argmax(1))
    finally:
        hook.remove()
    return torch.cat(captured).double().numpy(), torch.cat(preds)


def features(classifier: Classifier, images_uint8: torch.Tensor) -> np.ndarray:
    """(N, D) float64 features: the input of the classifier's last Linear (LeNet: 500-d
    post-ReLU fc1 activations) for uint8 (N, C, H, W) images, normalised as in training."""
    return _forward(classifier, images_uint8)[0]


def statistics(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of features (N, D)."""
    if len(feats) < 2:
        raise CnnkitError(f"FID needs at least 2 images per set, got {len(feats)}")
    return feats.mean(0), np.cov(feats, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2):
    ‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁ Σ₂)^½ (Dowson & Landau 1982).

    tr (Σ₁ Σ₂)^½ is computed as tr (Σ₁^½ Σ₂ Σ₁^½)^½ (the two matrices are similar, so their square
    roots have the same eigenvalues) from symmetric eigendecompositions: always real and finite,
    also when the covariances are singular (fewer images than feature dimensions), where
    scipy.linalg.sqrtm of the non-symmetric product warns and loses accuracy. The tests check it
    against sqrtm on well-conditioned matrices.
    """
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1 = np.atleast_2d(sigma1).astype(np.float64)
    sigma2 = np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise CnnkitError(f"feature statistics differ in shape: {mu1.shape}/{sigma1.shape} vs "
                          f"{mu2.shape}/{sigma2.shape}")
    diff = mu1 - mu2
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh(_sqrt_psd(sigma1) @ sigma2 @ _sqrt_psd(sigma1)),
                                 0.0, None)).sum()
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt
    return float(max(value, 0.0))  # tiny negative values are rounding around 0


def _sqrt_psd(sigma: np.ndarray) -> np.ndarray:
    """Symmetric square root of a positive semi-definite matrix (rounding negatives clipped)."""
    values, vectors = np.linalg.eigh((sigma + sigma.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def kid_from_features(feats_a: np.ndarray, feats_b: np.ndarray, *, subsets: int = 100,
                      subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """KID between feature sets (n_a, D) and (n_b, D): (estimate, standard error).

    As the reference implementation: the mean over `subsets` random subsets (without
    replacement) of min(subset_size, n_a, n_b) features from each set of the unbiased MMD² with
    k(x, y) = (xᵀy/D + 1)³. When one subset is the whole data it is computed once.
    The standard error is the delete-one jackknife standard error of one subset's estimate
    (Arvesen 1969, for two-sample U-statistics), averaged in variance over the subsets and
    divided by √(n // s): the overlapping subsets carry about as much information as the n // s
    disjoint subsets the data could be cut into. The spread of overlapping subsets alone would
    not do: for n ≤ s every subset is the same set and the spread is 0.
    """
    a, b = np.asarray(feats_a, np.float64), np.asarray(feats_b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise CnnkitError(f"KID needs two (N, D) feature sets of equal D, got {a.shape}, {b.shape}")
    size = min(subset_size, len(a), len(b))
    if size < 3:  # the jackknife removes one point from an unbiased estimate over pairs
        raise CnnkitError(f"KID needs at least 3 images per set, got {min(len(a), len(b))}")
    rng = np.random.default_rng(seed)
    whole = size == len(a) == len(b)
    values, variances = [], []
    for _ in range(1 if whole else subsets):
        x = a if size == len(a) else a[rng.choice(len(a), size, replace=False)]
        y = b if size == len(b) else b[rng.choice(len(b), size, replace=False)]
        value, variance = _mmd2_unbiased(x, y)
        values.append(value)
        variances.append(variance)
    disjoint = max(1, min(len(a), len(b)) // size)
    return float(np.mean(values)), float(np.sqrt(np.mean(variances) / disjoint))


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Unbiased MMD² of (m, D) and (n, D) with the cubic kernel, and its jackknife variance.

    MMD²_u = Σ_{i≠i'} k(x_i, x_i')/(m(m−1)) + Σ_{j≠j'} k(y_j, y_j')/(n(n−1)) − 2 Σ k(x_i, y_j)/(mn).
    Each delete-one estimate follows from the kernel matrices' row sums, so the jackknife costs
    O(m + n) beyond the kernels themselves.
    """
    m, n, d = len(x), len(y), x.shape[1]
    kernel = dict(degree=3, gamma=1.0 / d, coef0=1.0)  # (xᵀy/d + 1)³
    kxx, kyy, kxy = (polynomial_kernel(x, x, **kernel), polynomial_kernel(y, y, **kernel),
                     polynomial_kernel(x, y, **kernel))  # (m, m), (n, n), (m, n)
    rx = kxx.sum(1) - np.diag(kxx)  # (m,): Σ_{i'≠i} k(x_i, x_i')
    ry = kyy.sum(1) - np.diag(kyy)  # (n,)
    cx, cy = kxy.sum(1), kxy.sum(0)  # (m,), (n,): cross sums per x_i and per y_j
    sxx, syy, sxy = rx.sum(), ry.sum(), cx.sum()
    value = sxx / (m * (m - 1)) + syy / (n * (n - 1)) - 2 * sxy / (m * n)
    # delete x_i: its row and column leave Σ k(x, x') (2 r_i) and its row leaves Σ k(x, y)
    without_x = (sxx - 2 * rx) / ((m - 1) * (m - 2)) + syy / (n * (n - 1)) \
        - 2 * (sxy - cx) / ((m - 1) * n)
    without_y = sxx / (m * (m - 1)) + (syy - 2 * ry) / ((n - 1) * (n - 2)) \
        - 2 * (sxy - cy) / (m * (n - 1))
    variance = (m - 1) / m * ((without_x - without_x.mean()) ** 2).sum() \
        + (n - 1) / n * ((without_y - without_y.mean()) ** 2).sum()
    return float(value), float(variance)


def fid(classifier: Classifier, images_a: torch.Tensor, images_b: torch.Tensor) -> float:
    """FID between two uint8 image sets in the classifier's feature space."""
    return frechet_distance(*statistics(features(classifier, images_a)),
                            *statistics(features(classifier, images_b)))


def fid_kid(classifier: Classifier, images_a: torch.Tensor, images_b: torch.Tensor, *,
            seed: int = 0) -> tuple[float, float, float]:
    """(FID, KID, KID's standard error) between two uint8 image sets, features computed once."""
    fa, fb = features(classifier, images_a), features(classifier, images_b)
    return (frechet_distance(*statistics(fa), *statistics(fb)),
            *kid_from_features(fa, fb, seed=seed))


def conditional_accuracy(classifier: Classifier, images: torch.Tensor,
                         requested_labels: torch.Tensor) -> float:
    """Fraction of images the classifier assigns to the class they were generated for."""
    requested = torch.as_tensor(requested_labels, dtype=torch.int64).flatten()
    if len(requested) != len(images):
        raise CnnkitError(f"{len(images)} images but {len(requested)} requested labels")
    if len(requested) and (requested.min() < 0 or requested.max() >= len(classifier.classes)):
        raise CnnkitError(f"requested labels must be in 0..{len(classifier.classes) - 1}")
    _, preds = _forward(classifier, images)
    return float((preds == requested).double().mean())


def random_subset(images: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """n images drawn without replacement (seeded), or all of them when there are fewer."""
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    return images[order[:n]]


__all__ = ["Classifier", "load_classifier", "features", "statistics", "frechet_distance", "fid",
           "kid_from_features", "fid_kid",
           "conditional_accuracy", "random_subset", "check_images"]
