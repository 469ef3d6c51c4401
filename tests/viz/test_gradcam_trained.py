"""Saliency and Grad-CAM explain the pre-softmax score, checked on a LeNet trained on real MNIST.

The chapter's LeNet ends in LogSoftmax: differentiating its output (log p_c) gives a gradient that
vanishes for a confident prediction, and Grad-CAM on the pre-ReLU conv2 maps was blank for the
first MNIST test digit. These tests train a LeNet for a few seconds and look at the maps.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import binary_dilation
from torch import nn

from cnnkit.models import create_model
from cnnkit.utils import CnnkitError
from cnnkit.viz.inside import class_scores, grad_cam, place_map, saliency
from tests._idx import read_idx

MEAN, STD = 0.1307, 0.3081  # MNIST normalisation, as `cnnkit train` uses
N_TEST = 20


@pytest.fixture(scope="module")
def trained(mnist_dir, one_thread):
    """A LeNet after 250 Adam steps on 12,000 real MNIST training digits (~99% test accuracy),
    and the first N_TEST test digits (uint8 and normalised) with their labels."""
    def load(stem, n):
        images = read_idx(mnist_dir / f"{stem}-images-idx3-ubyte.gz")[:n]
        labels = read_idx(mnist_dir / f"{stem}-labels-idx1-ubyte.gz")[:n]
        images = torch.from_numpy(images.copy())[:, None]  # (n, 1, 28, 28) uint8
        return images, torch.from_numpy(labels.astype(np.int64))
    images, labels = load("train", 12_000)
    x = (images.float() / 255 - MEAN) / STD
    torch.manual_seed(0)
    model = create_model("lenet")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    order = torch.randint(0, len(x), (250, 64), generator=torch.Generator().manual_seed(0))
    for batch in order:
        loss = F.nll_loss(model(x[batch]), labels[batch])  # the output is log-probabilities
        opt.zero_grad()
        loss.backward()
        opt.step()
    test_images, test_labels = load("t10k", N_TEST)
    return model.eval(), test_images, (test_images.float() / 255 - MEAN) / STD, test_labels


def _mass_on_digit(heat: np.ndarray, digit: np.ndarray) -> tuple[float, float]:
    """(share of the map's mass on the stroke pixels dilated by 2, share of the image they cover)."""
    stroke = binary_dilation(digit > 0.3 * 255, iterations=2)
    return float((heat * stroke).sum() / heat.sum()), float(stroke.mean())


def test_model_is_trained_and_explained_by_its_logits(trained):
    model, _, x, labels = trained
    with torch.no_grad():
        logits = model.fc2(model.relu3(model.fc1(torch.flatten(model.forward_features(x), 1))))
        log_probs = model(x)
    assert (log_probs.argmax(1) == labels).sum() >= N_TEST - 1
    scores = class_scores(model, x)
    torch.testing.assert_close(scores, logits)  # the input of LeNet's LogSoftmax, not its output
    # Why: the gradient of log p_c all but vanishes once p_c ≈ 1; that of the logit does not.
    xi = x[:1].clone().requires_grad_(True)
    model(xi)[0, labels[0]].backward()
    vanishing = xi.grad.abs().max()
    assert saliency(model, x[:1])[0].max() > 100 * vanishing


def test_grad_cam_of_trained_lenet_is_nonzero_and_on_the_digit(trained):
    model, digits, x, labels = trained
    on, area = [], []
    for i in range(N_TEST):
        cam, target = grad_cam(model, x[i:i + 1])
        assert cam.shape == (28, 28) and torch.isfinite(cam).all()
        assert target == int(class_scores(model, x[i:i + 1]).argmax())
        assert cam.max() == pytest.approx(1.0), f"blank Grad-CAM for test digit {i}"
        share, covered = _mass_on_digit(cam.numpy(), digits[i, 0].numpy())
        on.append(share)
        area.append(covered)
    # Most of the heat lies on the strokes (±2 px), which cover about a third of the image.
    assert np.mean(on) > 0.6 and np.median(on) > 0.6, np.round(on, 2)
    assert np.mean(on) > 1.8 * np.mean(area)


def test_saliency_of_trained_lenet_is_on_the_digit(trained):
    model, digits, x, _ = trained
    on, area = [], []
    for i in range(N_TEST):
        sal, _ = saliency(model, x[i:i + 1])
        assert sal.shape == (28, 28) and sal.max() > 0
        share, covered = _mass_on_digit(sal.numpy(), digits[i, 0].numpy())
        on.append(share)
        area.append(covered)
    assert np.mean(on) > 1.5 * np.mean(area), (np.round(on, 2), np.round(area, 2))


def test_place_map_puts_each_unit_at_its_receptive_field_centre():
    """LeNet's conv2 units: centre of unit i at pixel 6.5 + 2i (`visualize receptive-field`)."""
    for unit in range(8):
        cam = torch.zeros(8, 8)
        cam[unit, unit] = 1.0
        placed = place_map(cam, (28, 28), (6.5, 6.5), (2, 2))
        row = placed[:, 6 + 2 * unit]  # pixel column 6 + 2i, half a pixel left of the centre
        assert row[6 + 2 * unit] == pytest.approx(0.75 ** 2)  # (1 − 0.5/2) per axis
        assert placed.argmax() // 28 in (6 + 2 * unit, 7 + 2 * unit)
        assert placed[:, :4 + 2 * unit].sum() == 0  # one jump (2 px) beyond the centre: zero
    corner = torch.zeros(8, 8)
    corner[0, 0] = 1.0
    placed = place_map(corner, (28, 28), (6.5, 6.5), (2, 2))
    assert placed[:4].sum() == 0 and placed[:, :4].sum() == 0  # no heat on LeNet's 4-px margin


class _FunctionalLogSoftmax(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return F.log_softmax(self.fc(self.conv(x).mean((2, 3))), dim=1)


def test_functional_softmax_output_is_refused():
    torch.manual_seed(0)
    with pytest.raises(CnnkitError, match="pre-softmax"):
        saliency(_FunctionalLogSoftmax(), torch.randn(1, 1, 8, 8))


@pytest.mark.parametrize("name, size", [("lenet", (1, 28, 28)), ("simple_cnn", (1, 28, 28)),
                                        ("dilated_cnn", (1, 28, 28)), ("resnet18", (3, 64, 64)),
                                        ("mobilenet_v3_small", (3, 64, 64))])
def test_every_classifier_gets_maps_of_its_scores(name, size, one_thread):
    torch.manual_seed(0)
    model = create_model(name, in_chans=size[0]).eval()
    x = torch.randn(1, *size)
    with torch.no_grad():
        out = model(x)
    scores = class_scores(model, x).detach()
    if name == "lenet":
        assert not torch.allclose(scores, out)  # LogSoftmax stripped
        torch.testing.assert_close(torch.log_softmax(scores, 1), out)
    else:
        torch.testing.assert_close(scores, out)  # already pre-softmax
    cam, target = grad_cam(model, x)
    sal, _ = saliency(model, x, target)
    assert cam.shape == sal.shape == size[1:]
    assert torch.isfinite(cam).all() and 0 <= cam.min() and cam.max() <= 1
    assert sal.max() > 0
