"""The data set table, the bundled digits, and the tensor helpers every loader shares."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from cnnkit.data import ArrayDataset, get_dataset_info, list_datasets, load_dataset
from cnnkit.data.array_dataset import (channel_stats, convert_channels, resize_images,
                                       stratified_split)
from cnnkit.data.datasets import DIGITS_MEAN, DIGITS_STD, digits_split_indices
from cnnkit.utils import CnnkitError


def test_table_of_data_sets():
    assert list_datasets() == ["camvid", "cifar10", "detfolder", "digits", "fashion-mnist",
                               "horse2zebra", "horse2zebra-domains", "imagefolder", "isbi2012", "kmnist", "lsp", "mnist", "mnist-det",
                               "mnist-seq", "oxford-pets-det", "oxford-pets-seg", "raccoon",
                               "segfolder", "unpaired-domains"]
    for name in list_datasets():
        info = get_dataset_info(name)
        assert info.name == name and info.description and info.source
    assert get_dataset_info("cifar10").hflip_ok and not get_dataset_info("mnist").hflip_ok
    with pytest.raises(CnnkitError, match="unknown data set 'cifar'; did you mean cifar10"):
        get_dataset_info("cifar")
    with pytest.raises(CnnkitError, match="unknown split 'valid'"):
        load_dataset("digits", "valid")


def test_digits_fixed_stratified_split():
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    info = get_dataset_info("digits")
    assert (len(train), len(test)) == (info.train_size, info.test_size) == (1437, 360)
    assert train.images.shape[1:] == (1, 28, 28) and train.images.dtype == torch.uint8
    bunch = load_digits()
    # The documented recipe, called here directly, defines the split.
    train_index, test_index = train_test_split(np.arange(1797), test_size=0.2,
                                               stratify=bunch.target, random_state=0)
    assert np.array_equal(np.sort(test_index), digits_split_indices()[1].numpy())
    assert test.labels.tolist() == bunch.target[np.sort(test_index)].tolist()
    counts = np.bincount(bunch.target)
    assert all(abs(t - 0.2 * c) < 1 for t, c in zip(test.class_counts(), counts))  # stratified
    assert [a + b for a, b in zip(train.class_counts(), test.class_counts())] == counts.tolist()
    # The documented normalisation constants are the training split's statistics.
    (mean,), (std,) = channel_stats(train.images)
    assert train.mean == (DIGITS_MEAN,) and test.std == (DIGITS_STD,)
    assert mean == pytest.approx(DIGITS_MEAN, abs=5e-5)
    assert std == pytest.approx(DIGITS_STD, abs=5e-5)
    # Oracle for the pixels: PIL's bilinear upsampling of scikit-learn's 8×8 values (×255/16).
    assert int(train.images.max()) == 255 and int(train.images.min()) == 0  # 16 → 255
    for row, i in enumerate(np.sort(train_index)[:40]):
        small = Image.fromarray(np.rint(bunch.images[i] * 255 / 16).astype(np.uint8))
        expected = np.asarray(small.resize((28, 28), Image.BILINEAR)).astype(int)
        assert np.abs(train.images[row, 0].numpy().astype(int) - expected).max() <= 1


def test_stratified_split_properties():
    labels = torch.tensor([0] * 7 + [1] * 13 + [2] * 1 + [3] * 5)
    train, test = stratified_split(labels, 0.2, seed=0)
    assert torch.cat([train, test]).sort().values.equal(torch.arange(len(labels)))
    assert torch.bincount(labels[test], minlength=4).tolist() == [1, 3, 0, 1]  # 1.4, 2.6, .2, 1
    again, _ = stratified_split(labels, 0.2, seed=0)
    other, _ = stratified_split(labels, 0.2, seed=1)
    assert again.equal(train) and not other.equal(train)


def test_channel_stats_against_float64_reference():
    x = torch.randint(0, 256, (3000, 3, 5, 7), dtype=torch.uint8, generator=torch.Generator()
                      .manual_seed(0))
    mean, std = channel_stats(x)
    ref = x.double().permute(1, 0, 2, 3).flatten(1) / 255  # (C, N*H*W)
    assert torch.allclose(torch.tensor(mean, dtype=torch.float64), ref.mean(1), atol=1e-12)
    assert torch.allclose(torch.tensor(std, dtype=torch.float64), ref.std(1, unbiased=False),
                          atol=1e-12)


def test_conversions_against_pil():
    rng = np.random.RandomState(0)
    rgb = rng.randint(0, 256, (4, 37, 53, 3)).astype(np.uint8)  # (N, H, W, C)
    x = torch.from_numpy(rgb).permute(0, 3, 1, 2).contiguous()  # (N, C, H, W)
    grey = convert_channels(x, 1)
    for i in range(4):
        pil_grey = np.asarray(Image.fromarray(rgb[i]).convert("L")).astype(int)
        assert np.abs(grey[i, 0].numpy().astype(int) - pil_grey).max() <= 1
        for size in (16, 90):  # shrinking (antialiased) and growing
            pil = np.asarray(Image.fromarray(rgb[i]).resize((size, size), Image.BILINEAR))
            ours = resize_images(x[i:i + 1], size)[0].permute(1, 2, 0).numpy()
            assert np.abs(ours.astype(int) - pil.astype(int)).max() <= 1
    assert convert_channels(grey, 3).equal(grey.expand(-1, 3, -1, -1))
    with pytest.raises(CnnkitError, match="channels=1 .* or channels=3"):
        convert_channels(x, 2)


def test_array_dataset_checks_and_subset():
    images = torch.randint(0, 256, (6, 1, 4, 4), dtype=torch.uint8)
    ds = ArrayDataset(images, torch.arange(6), ["a"] * 6, "toy", False, (0.5,), (0.25,))
    part = ds.subset(torch.tensor([4, 1]))
    assert part.images.equal(images[[4, 1]]) and part.labels.tolist() == [4, 1]
    assert part.mean == (0.5,) and part.classes is ds.classes and len(part) == 2
    with pytest.raises(ValueError, match="uint8"):
        ArrayDataset(images.float(), torch.arange(6), [], "toy", False, (0.5,), (0.25,))
    with pytest.raises(ValueError, match="mean/std need 1 values"):
        ArrayDataset(images, torch.arange(6), [], "toy", False, (0.5, 0.5), (0.25,))
    with pytest.raises(CnnkitError, match="image_size must be a positive"):
        load_dataset("digits", image_size=0)
