"""Figures drawn from real MNIST and CIFAR-10 test images, read back as PNGs and inspected."""
import zipfile

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import accuracy_score, confusion_matrix

from cnnkit.utils import CnnkitError
from cnnkit.viz import (display_images, image_grid, make_grid, plot_confusion, plot_curves,
                        plot_predictions)
from tests.conftest import DATASETS
from tests._idx import read_idx

DIGITS = [str(d) for d in range(10)]
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


@pytest.fixture(scope="module")
def mnist(mnist_dir):
    """The first 64 test digits, (64, 1, 28, 28) uint8, and their labels."""
    images = read_idx(mnist_dir / "t10k-images-idx3-ubyte.gz")[:64]
    labels = read_idx(mnist_dir / "t10k-labels-idx1-ubyte.gz")[:64]
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


@pytest.fixture(scope="module")
def cifar():
    """12 CIFAR-10 test images, (12, 3, 32, 32) uint8, their labels and the class names."""
    with zipfile.ZipFile(DATASETS / "cifar10-jpg" / "test.zip") as archive:
        names = sorted(n for n in archive.namelist() if n.endswith(".jpg"))
        classes = sorted({n.split("/")[-2] for n in names})
        picked = names[::len(names) // 12][:12]  # spread over the class folders
        images = [np.asarray(Image.open(archive.open(n)).convert("RGB")) for n in picked]
    labels = torch.tensor([classes.index(n.split("/")[-2]) for n in picked])
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), labels, classes


def read_png(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(np.int16)  # (H, W, 3)


def red_mask(pixels: np.ndarray) -> np.ndarray:
    r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    return (r > 200) & (g < 60) & (b < 60)


def assert_figure(path, returned, min_size=(300, 200)):
    """A real PNG of a sensible size that is not blank, written atomically, figure closed."""
    assert returned == path and path.is_file()
    pixels = read_png(path)
    assert pixels.shape[1] >= min_size[0] and pixels.shape[0] >= min_size[1]
    assert pixels.std() > 20, "the figure looks blank"
    assert not list(path.parent.glob("*.tmp")), "a temporary file was left behind"
    assert plt.get_fignums() == [], "a figure was left open"


# --- learning curves ---

def test_plot_curves_with_and_without_validation(tmp_path):
    history = [{"epoch": e, "train_loss": 2.0 / e, "train_acc": 1 - 0.5 / e, "val_loss": 2.2 / e,
                "val_acc": 1 - 0.6 / e, "lr": 0.1 / e} for e in range(1, 6)]
    path = tmp_path / "curves.png"
    assert_figure(path, plot_curves(history, path), min_size=(600, 300))
    assert Image.open(path).text["Title"] == "learning curves, 5 epochs"

    no_val = [{"epoch": 1, "train_loss": 0.9, "train_acc": 0.7, "val_loss": None, "val_acc": None}]
    one = tmp_path / "one_epoch.png"
    assert_figure(one, plot_curves(no_val, one))
    assert not np.array_equal(read_png(path), read_png(one))
    with pytest.raises(CnnkitError, match="empty history"):
        plot_curves([], tmp_path / "none.png")
    with pytest.raises(CnnkitError, match="no train_loss"):
        plot_curves([{"epoch": 1, "lr": 0.1}], tmp_path / "none.png")
    assert plt.get_fignums() == []


# --- confusion matrix ---

def test_plot_confusion_title_orientation_and_errors(tmp_path, mnist):
    _, labels = mnist
    preds = labels.clone()
    preds[::7] = (preds[::7] + 3) % 10  # 10 of 64 wrong
    cm = torch.bincount(labels * 10 + preds, minlength=100).view(10, 10)  # rows true, cols pred
    path = tmp_path / "cm.png"
    assert_figure(path, plot_confusion(cm, DIGITS, path), min_size=(400, 400))
    accuracy = accuracy_score(labels.numpy(), preds.numpy())
    assert f"accuracy {accuracy:.2%}" in Image.open(path).text["Title"]

    # sklearn's matrix (the same convention, as a numpy array) draws the same picture
    same = tmp_path / "sklearn.png"
    plot_confusion(confusion_matrix(labels.numpy(), preds.numpy(), labels=range(10)), DIGITS, same)
    assert np.array_equal(read_png(path), read_png(same))
    transposed = tmp_path / "transposed.png"
    plot_confusion(cm.T, DIGITS, transposed)
    assert not np.array_equal(read_png(path), read_png(transposed))
    counts = tmp_path / "counts.png"
    assert_figure(counts, plot_confusion(cm, DIGITS, counts, normalize=False))
    assert not np.array_equal(read_png(path), read_png(counts))

    many = torch.randint(0, 50, (25, 25))  # no annotations past 20 classes, still a figure
    assert_figure(tmp_path / "many.png", plot_confusion(many, [f"c{i}" for i in range(25)],
                                                        tmp_path / "many.png"))
    with pytest.raises(CnnkitError, match="class names"):
        plot_confusion(cm, DIGITS[:9], tmp_path / "bad.png")
    with pytest.raises(CnnkitError, match="square"):
        plot_confusion(cm[:, :9], DIGITS, tmp_path / "bad.png")
    assert plt.get_fignums() == []


# --- predictions ---

def test_plot_predictions_marks_exactly_the_wrong_ones(tmp_path, mnist):
    images, labels = mnist
    images, labels = images[:8], labels[:8]
    normalised = (images.float() / 255 - MNIST_MEAN) / MNIST_STD
    probs = torch.softmax(torch.randn(8, 10), 1)
    kwargs = dict(probs=probs, mean=MNIST_MEAN, std=MNIST_STD, ncols=4)

    right = tmp_path / "right.png"
    assert_figure(right, plot_predictions(normalised, labels, labels, DIGITS, right, **kwargs))
    assert not red_mask(read_png(right)).any(), "nothing is wrong, nothing may be red"

    preds = labels.clone()
    preds[5] = (preds[5] + 1) % 10  # the second tile of the second row (4 per row)
    one = tmp_path / "one_wrong.png"
    assert_figure(one, plot_predictions(normalised, preds, labels, DIGITS, one, **kwargs))
    ys, xs = np.nonzero(red_mask(read_png(one)))
    height, width = read_png(one).shape[:2]
    assert len(xs) > 200, "the wrong prediction needs a red frame"
    assert width / 4 < xs.min() and xs.max() < width / 2, "red outside the second column"
    assert ys.min() > height / 2, "red outside the second row"
    assert "1 of 8 wrong" in Image.open(one).text["Title"]

    preds[0] = (preds[0] + 1) % 10  # now the first tile as well
    two = tmp_path / "two_wrong.png"
    plot_predictions(normalised, preds, labels, DIGITS, two, **kwargs)
    ys, xs = np.nonzero(red_mask(read_png(two)))
    assert (xs < width / 4).any() and (ys < height / 2).any()
    assert plt.get_fignums() == []


def test_plot_predictions_rgb_and_errors(tmp_path, cifar):
    images, labels, classes = cifar
    normalised = (images.float() / 255 - torch.tensor(CIFAR_MEAN).view(3, 1, 1)) / \
        torch.tensor(CIFAR_STD).view(3, 1, 1)
    path = tmp_path / "cifar.png"
    assert_figure(path, plot_predictions(normalised, labels, labels, classes, path,
                                         mean=CIFAR_MEAN, std=CIFAR_STD))
    raw = tmp_path / "cifar_uint8.png"
    assert_figure(raw, plot_predictions(images, labels, labels, classes, raw))
    # un-normalising restores the raw pixels, so both figures are the same picture
    assert np.abs(read_png(path) - read_png(raw)).max() <= 1
    with pytest.raises(CnnkitError, match="one per image"):
        plot_predictions(images, labels[:3], labels, classes, tmp_path / "bad.png")
    with pytest.raises(CnnkitError, match="outside"):
        plot_predictions(images, labels + 10, labels, classes, tmp_path / "bad.png")
    with pytest.raises(CnnkitError, match="one per channel"):
        plot_predictions(normalised, labels, labels, classes, tmp_path / "bad.png", mean=(0.5, 0.5))
    assert plt.get_fignums() == []


def test_display_images_unnormalises(mnist, cifar):
    images, _ = mnist
    expected = images.float().permute(0, 2, 3, 1).numpy() / 255
    normalised = (images.float() / 255 - MNIST_MEAN) / MNIST_STD
    np.testing.assert_allclose(display_images(normalised, MNIST_MEAN, MNIST_STD), expected, atol=1e-6)
    np.testing.assert_allclose(display_images(images), expected, atol=0)
    rgb, _, _ = cifar
    mean, std = torch.tensor(CIFAR_MEAN).view(3, 1, 1), torch.tensor(CIFAR_STD).view(3, 1, 1)
    shown = display_images((rgb.float() / 255 - mean) / std, CIFAR_MEAN, CIFAR_STD)
    np.testing.assert_allclose(shown, rgb.permute(0, 2, 3, 1).numpy() / 255, atol=1e-6)
    with pytest.raises(CnnkitError, match="1 or 3 channels"):
        display_images(torch.zeros(2, 2, 8, 8))


# --- image grids ---

def tile(grid: np.ndarray, k: int, nrow: int, size: int, padding: int = 2) -> np.ndarray:
    top = padding + (k // nrow) * (size + padding)
    left = padding + (k % nrow) * (size + padding)
    return grid[top:top + size, left:left + size]


def test_image_grid_is_pixel_exact(tmp_path, mnist, cifar):
    images, _ = mnist
    path = tmp_path / "grid.png"
    assert image_grid(images, path) == path
    grid = np.asarray(Image.open(path))
    assert Image.open(path).mode == "L" and grid.shape == (8 * 30 + 2, 8 * 30 + 2)
    for k in (0, 9, 63):
        np.testing.assert_array_equal(tile(grid, k, 8, 28), images[k, 0].numpy())
    assert grid[:2].max() == 0 and grid[:, 30:32].max() == 0, "padding must be black"

    # tanh-range samples of a generative model come back as the same pixels
    tanh = tmp_path / "tanh.png"
    image_grid(images.float() / 127.5 - 1, tanh, value_range=(-1, 1))
    np.testing.assert_array_equal(np.asarray(Image.open(tanh)), grid)
    unit = tmp_path / "unit.png"
    image_grid(images.float() / 255, unit)
    np.testing.assert_array_equal(np.asarray(Image.open(unit)), grid)

    rgb, _, _ = cifar
    colour = tmp_path / "cifar.png"
    image_grid(rgb, colour, nrow=5, padding=1)
    pixels = np.array(Image.open(colour))  # a writable copy, for torch.from_numpy
    assert pixels.shape == (3 * 33 + 1, 5 * 33 + 1, 3)  # 12 images, 5 a row → 3 rows
    np.testing.assert_array_equal(tile(pixels, 11, 5, 32, padding=1), rgb[11].permute(1, 2, 0))
    assert torch.equal(make_grid(rgb, nrow=5, padding=1), torch.from_numpy(pixels).permute(2, 0, 1))


def test_image_grid_with_title_and_errors(tmp_path, mnist):
    images, _ = mnist
    path = tmp_path / "titled.png"
    assert_figure(path, image_grid(images[:16], path, nrow=4, title="DDPM samples, step 1000"),
                  min_size=(240, 240))
    assert Image.open(path).text["Title"] == "DDPM samples, step 1000"
    with pytest.raises(CnnkitError, match="1 or 3 channels"):
        image_grid(torch.zeros(4, 2, 8, 8), tmp_path / "bad.png")
    with pytest.raises(CnnkitError, match="value_range"):
        image_grid(torch.zeros(4, 1, 8, 8), tmp_path / "bad.png", value_range=(1, -1))
    assert not (tmp_path / "bad.png").exists()
