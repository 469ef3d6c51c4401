"""FID in a cnnkit LeNet's feature space (Heusel et al. 2017) and conditional accuracy (digits)."""
import numpy as np
import pytest
import scipy.linalg
import torch

from cnnkit.data import load_dataset
from cnnkit.train import TrainConfig, train
from cnnkit.generation.fid import (conditional_accuracy, features, fid, frechet_distance,
                                          load_classifier, statistics)
from cnnkit.utils import CnnkitError


def test_frechet_distance_diagonal_closed_form():
    """For diagonal covariances (Σ₁Σ₂)^½ = diag(√(a·b)): FID = ‖μ₁−μ₂‖² + Σ (√a − √b)²."""
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=7), rng.normal(size=7)
    a, b = rng.uniform(0.1, 3, size=7), rng.uniform(0.1, 3, size=7)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_matches_scipy_sqrtm_and_is_zero_on_itself():
    rng = np.random.default_rng(1)
    m1, m2 = rng.normal(size=(2, 20, 30))
    s1, s2 = m1 @ m1.T / 30, m2 @ m2.T / 30  # full-rank, non-commuting covariances
    mu1, mu2 = rng.normal(size=(2, 20))
    oracle = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2) - 2 * np.trace(
        np.real(scipy.linalg.sqrtm(s1 @ s2)))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(oracle, rel=1e-9)
    assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(oracle, rel=1e-9)  # symmetric
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(CnnkitError, match="shape"):
        frechet_distance(mu1, s1, mu2[:5], s2[:5, :5])


@pytest.fixture(scope="module")
def digits_lenet(tmp_path_factory):
    out = tmp_path_factory.mktemp("lenet")
    result = train(TrainConfig(dataset="digits", epochs=3, val_fraction=0.0, precision="fp32",
                               out_dir=str(out), name="lenet", quiet=True), log=lambda *a: None)
    return result, load_classifier(result.run_dir / "last.pt")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", "train"), load_dataset("digits", "test")


def test_features_are_lenet_relu_fc1(digits_lenet, digits):
    _, clf = digits_lenet
    images = digits[1].images[:37]
    feats = features(clf, images)
    assert feats.shape == (37, 500) and feats.dtype == np.float64
    m = clf.model
    x = (images.float() / 255 - clf.mean[0]) / clf.std[0]
    with torch.no_grad():
        expected = m.relu3(m.fc1(torch.flatten(m.forward_features(x), 1)))
    np.testing.assert_allclose(feats, expected.double().numpy(), rtol=1e-5, atol=1e-5)
    assert (feats >= 0).all() and (feats > 0).any()


def test_fid_real_vs_real_far_below_noise(digits_lenet, digits):
    _, clf = digits_lenet
    train_set, test_set = digits
    assert fid(clf, test_set.images, test_set.images) == pytest.approx(0.0, abs=1e-6)
    floor = fid(clf, train_set.images, test_set.images)
    noise = torch.randint(0, 256, test_set.images.shape, dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(0))
    blank = torch.zeros_like(test_set.images)
    blank[:, :, ::2] = 255  # stripes: constant-ish features, wrong mean
    assert floor > 0
    assert fid(clf, noise, test_set.images) > 20 * floor
    assert fid(clf, blank, test_set.images) > 20 * floor
    mu, sigma = statistics(features(clf, test_set.images))
    assert mu.shape == (500,) and sigma.shape == (500, 500)


def test_conditional_accuracy(digits_lenet, digits):
    result, clf = digits_lenet
    test_set = digits[1]
    # On real test images with their true labels it is the test accuracy the trainer measured.
    assert conditional_accuracy(clf, test_set.images, test_set.labels) == pytest.approx(
        result.test.top1, abs=1 / len(test_set))
    wrong = (test_set.labels + 1) % 10
    assert conditional_accuracy(clf, test_set.images, wrong) < 0.1
    with pytest.raises(CnnkitError, match="requested labels"):
        conditional_accuracy(clf, test_set.images[:3], torch.tensor([1, 2]))
    with pytest.raises(CnnkitError, match="uint8"):
        features(clf, test_set.images.float())
    with pytest.raises(CnnkitError, match="trained on"):
        features(clf, torch.zeros(2, 3, 28, 28, dtype=torch.uint8))
