"""mnist-seq: rows of real MNIST digits, checked pixel for pixel against the official IDX files."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cnnkit.data import ArrayDataset, InMemoryLoader, get_dataset_info, load_dataset
from cnnkit.data.array_dataset import channel_stats
from cnnkit.data.mnist_seq import (CANVAS_WIDTH, CLASSES, END, MAX_LEN, MEAN, MIN_LEN, SEEDS,
                                   SIZES, STD, plan_sequences)
from cnnkit.utils import CnnkitError
from tests.conftest import DATASETS
from tests._idx import read_idx

MNIST_FILES = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
               "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, mnist_dir):
    """A data_dir whose mnist/ folder links the real files: what mnist-seq must read, unchanged."""
    root = tmp_path_factory.mktemp("data")
    (root / "mnist").mkdir()
    for name in MNIST_FILES:
        (root / "mnist" / name).symlink_to(mnist_dir / name)
    return root


@pytest.fixture(scope="module")
def seq_train(data_dir):
    return load_dataset("mnist-seq", "train", data_dir=data_dir, download=False)


@pytest.fixture(scope="module")
def seq_test(data_dir):
    return load_dataset("mnist-seq", "test", data_dir=data_dir, download=False)


def check_against_source(ds: ArrayDataset, split: str, prefix: str, rows) -> None:
    """Each canvas = its planned MNIST digits at offset + 28·k, zero elsewhere; labels match."""
    source_images = read_idx(DATASETS / "mnist" / f"{prefix}-images-idx3-ubyte.gz")
    source_labels = read_idx(DATASETS / "mnist" / f"{prefix}-labels-idx1-ubyte.gz")
    plan = plan_sequences(len(source_images), SIZES[split], SEEDS[split])
    for i in rows:
        length, offset = int(plan.lengths[i]), int(plan.offsets[i])
        canvas = ds.images[i, 0].numpy()  # (28, 140)
        expected = np.zeros((28, CANVAS_WIDTH), np.uint8)
        for k in range(length):
            expected[:, offset + 28 * k: offset + 28 * (k + 1)] = source_images[plan.sources[i, k]]
        assert np.array_equal(canvas, expected), f"sequence {i}"
        digits = [int(source_labels[s]) for s in plan.sources[i, :length]]
        assert ds.labels[i].tolist() == digits + [END] * (MAX_LEN - length)


def test_train_split_shapes_padding_and_pixels(seq_train):
    info = get_dataset_info("mnist-seq")
    assert (info.num_classes, info.train_size, info.test_size) == (11, 60_000, 10_000)
    assert not info.hflip_ok and not seq_train.hflip_ok
    assert seq_train.classes == [str(d) for d in range(10)] + ["end"] == CLASSES
    assert seq_train.images.shape == (60_000, 1, 28, 140)
    assert seq_train.images.dtype == torch.uint8
    assert seq_train.labels.shape == (60_000, 5) and seq_train.labels.dtype == torch.int64
    is_end = seq_train.labels == END
    lengths = (~is_end).sum(1)
    assert lengths.min() == MIN_LEN and lengths.max() == MAX_LEN
    counts = torch.bincount(lengths, minlength=6)[3:].double()
    assert ((counts / 60_000 - 1 / 3).abs() < 0.01).all()  # uniform in {3, 4, 5}
    # END only as padding: once a position is END, every later one is too.
    assert torch.equal(is_end, is_end.int().cummax(1).values.bool())
    assert seq_train.labels[~is_end].max() <= 9
    # Each sequence is its planned MNIST training digits, pixel for pixel, zero elsewhere.
    check_against_source(seq_train, "train", "train", rows=[0, 1, 2, 12_345, 59_999])
    # The documented normalisation constants are this split's statistics.
    (mean,), (std,) = channel_stats(seq_train.images)
    assert seq_train.mean == (MEAN,) and seq_train.std == (STD,)
    assert mean == pytest.approx(MEAN, abs=5e-5) and std == pytest.approx(STD, abs=5e-5)


def test_offsets_vary_within_the_canvas():
    plan = plan_sequences(60_000, 60_000, SEEDS["train"])
    slack = CANVAS_WIDTH - 28 * plan.lengths
    assert (plan.offsets >= 0).all() and (plan.offsets <= slack).all()
    for length, room in ((3, 56), (4, 28)):
        offsets = plan.offsets[plan.lengths == length]
        assert offsets.unique().tolist() == list(range(room + 1))  # every position is drawn
        assert float(offsets.double().mean()) == pytest.approx(room / 2, abs=1.0)
    assert (plan.offsets[plan.lengths == 5] == 0).all()  # a full row has no room to move
    assert ((plan.sources >= 0) == (torch.arange(5) < plan.lengths[:, None])).all()


def test_test_split_uses_mnist_test_digits_and_is_deterministic(data_dir, seq_test):
    assert seq_test.images.shape == (10_000, 1, 28, 140) and seq_test.labels.shape == (10_000, 5)
    check_against_source(seq_test, "test", "t10k", rows=[0, 7, 9_999])
    again = load_dataset("mnist-seq", "test", data_dir=data_dir, download=False)
    assert torch.equal(again.images, seq_test.images)
    assert torch.equal(again.labels, seq_test.labels)
    assert seq_test.mean == (MEAN,)  # the training statistics, also for the test split


def test_train_and_test_draw_from_different_mnist_splits(seq_train, seq_test):
    # A test canvas's digits are t10k images (checked above); no training canvas equals it.
    first_test = seq_test.images[0, 0]
    assert not (seq_train.images[:, 0] == first_test).all(-1).all(-1).any()
    assert not torch.equal(seq_train.labels[:10_000], seq_test.labels)


def test_reuses_mnist_files_and_downloads_nothing_new(tmp_path, mnist_dir, serve):
    base, server = serve(mnist_dir)  # a mirror holding the official files
    ds = load_dataset("mnist-seq", "test", data_dir=tmp_path, mirror=base, quiet=True)
    # mnist's own two test files, fetched into data_dir/mnist (and MD5-checked there).
    assert sorted(server.requests) == ["/t10k-images-idx3-ubyte.gz",
                                       "/t10k-labels-idx1-ubyte.gz"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mnist"]
    again = load_dataset("mnist-seq", "test", data_dir=tmp_path, mirror=base, quiet=True)
    assert len(server.requests) == 2  # present and verified: nothing fetched again
    assert torch.equal(ds.images, again.images)


def test_conversions_and_refused_resize(data_dir):
    rgb = load_dataset("mnist-seq", "test", data_dir=data_dir, download=False, channels=3)
    assert rgb.images.shape == (10_000, 3, 28, 140) and len(rgb.mean) == 3
    native = load_dataset("mnist-seq", "test", data_dir=data_dir, download=False, image_size=28)
    assert native.images.shape == (10_000, 1, 28, 140)  # 28 = the native height: unchanged
    with pytest.raises(CnnkitError, match="cannot be resized to 32×32; leave --image-size unset"):
        load_dataset("mnist-seq", "test", data_dir=data_dir, download=False, image_size=32)


def test_array_dataset_with_sequence_labels(seq_test):
    part = seq_test.subset(torch.tensor([5, 0, 3]))
    assert part.labels.shape == (3, 5) and torch.equal(part.labels[1], seq_test.labels[0])
    counts = seq_test.class_counts()  # per token
    assert len(counts) == 11 and sum(counts) == 10_000 * 5
    assert counts[END] == int((seq_test.labels == END).sum())
    x, y = next(iter(InMemoryLoader(seq_test, 8, shuffle=False)))
    assert x.shape == (8, 1, 28, 140) and torch.equal(y, seq_test.labels[:8])
    images = seq_test.images[:2]
    for bad in (seq_test.labels[:2, :, None], seq_test.labels[:3]):  # (N, T, 1); wrong N
        with pytest.raises(ValueError, match=r"labels must be \(N,\) or \(N, T\)"):
            ArrayDataset(images, bad, CLASSES, "x", False, (0.0,), (1.0,))
