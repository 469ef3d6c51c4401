"""The data-set registry: one entry per data set, checked at registration, read by load_dataset."""
from __future__ import annotations

import dataclasses
import re

import pytest
import torch

from cnnkit.data import ArrayDataset, get_dataset_info, list_datasets, load_dataset
from cnnkit.data import _registry
from cnnkit.data._registry import DatasetInfo, register_dataset

# The training recipes TrainConfig takes its defaults from (train/config.py's RECIPES before the
# registry held them); imagefolder has the default one.
RECIPES = {
    "camvid": dict(epochs=200, batch_size=8, crop_size=176, max_scale=1.25, seg_loss="ce+dice",
                   class_weights="balanced"),
    "cifar10": dict(epochs=30, batch_size=128, translate=0),
    "detfolder": dict(epochs=20, batch_size=4, max_scale=1.25),
    "digits": dict(epochs=30, batch_size=32, translate=2),
    "fashion-mnist": dict(epochs=15, batch_size=128, translate=0),
    "horse2zebra": dict(epochs=200, batch_size=1),
    "horse2zebra-domains": dict(epochs=6, batch_size=64, translate=4, image_size=64),
    "imagefolder": dict(epochs=10, batch_size=128, translate=0),
    "isbi2012": dict(epochs=800, batch_size=4, crop_size=256, elastic=True, vflip=True,
                     border_weight=True),
    "kmnist": dict(epochs=10, batch_size=128, translate=1),
    "lsp": dict(epochs=120, batch_size=32),
    "mnist": dict(epochs=1, batch_size=128, translate=0, lr=6e-3, label_smoothing=0.1),
    "mnist-seq": dict(epochs=3, batch_size=64, translate=0),
    "mnist-det": dict(epochs=6, batch_size=4),
    "oxford-pets-det": dict(epochs=20, batch_size=8, max_scale=1.25),
    "raccoon": dict(epochs=30, batch_size=4, max_scale=1.25),
    "oxford-pets-seg": dict(epochs=250, batch_size=16, crop_size=128, max_scale=1.25,
                            seg_loss="ce+dice"),
    "segfolder": dict(epochs=30, batch_size=8),
    "unpaired-domains": dict(epochs=6, batch_size=64, translate=4, image_size=64),
}
# Bundled with scikit-learn; the user's folders; the segmentation and detection sets read from
# data_dir.
NOTHING_TO_DOWNLOAD = {"digits", "imagefolder", "segfolder", "detfolder", "isbi2012",
                       "oxford-pets-seg", "camvid", "raccoon", "oxford-pets-det", "lsp",
                       "horse2zebra", "horse2zebra-domains", "unpaired-domains"}


@pytest.fixture
def scratch_registry(monkeypatch):
    """The registry as a copy, so a test can register entries without leaving them behind."""
    monkeypatch.setattr(_registry, "_DATASETS", dict(_registry._DATASETS))


def test_every_entry_has_a_recipe_classes_and_loader():
    assert {name: get_dataset_info(name).recipe for name in list_datasets()} == RECIPES
    for name in list_datasets():
        info = get_dataset_info(name)
        assert type(info.recipe) is dict and callable(info.loader)
        assert info.classes is None or len(info.classes) == info.num_classes
        assert (info.mean is None) == (info.std is None)


def test_every_downloaded_file_has_an_md5():
    for name in list_datasets():
        files = get_dataset_info(name).files
        if name in NOTHING_TO_DOWNLOAD:
            assert files == {}, name
        else:
            assert files and all(re.fullmatch(r"[0-9a-f]{32}", md5) for md5 in files.values())
    # mnist-seq and mnist-det read mnist's own files (from data_dir/mnist): the same four.
    assert get_dataset_info("mnist-seq").files == get_dataset_info("mnist").files
    assert get_dataset_info("mnist-det").files == get_dataset_info("mnist").files


def test_duplicate_name_raises_and_keeps_the_first(scratch_registry):
    mnist = get_dataset_info("mnist")
    with pytest.raises(ValueError, match="data set 'mnist' is registered twice"):
        register_dataset(dataclasses.replace(mnist, description="another mnist"))
    assert get_dataset_info("mnist") is mnist


def test_malformed_entries_fail_at_construction():
    mnist = get_dataset_info("mnist")
    with pytest.raises(ValueError, match="has MD5 'f68b3c2d'; give the 32 lower-case hex"):
        dataclasses.replace(mnist, files={"train-images-idx3-ubyte.gz": "f68b3c2d"})
    with pytest.raises(ValueError, match="3 class names for num_classes=10"):
        dataclasses.replace(mnist, classes=("a", "b", "c"))
    with pytest.raises(ValueError, match="mean/std need 1 values"):
        dataclasses.replace(mnist, mean=(0.5, 0.5, 0.5))


def test_a_new_data_set_is_one_entry(scratch_registry):
    def load_toy(info, split, *, image_size, channels, **fetch_options):
        images = torch.full((4 if split == "train" else 2, 1, 6, 6), 7, dtype=torch.uint8)
        return ArrayDataset(images, torch.tensor([0, 1] * (len(images) // 2)), list(info.classes),
                            info.name, info.hflip_ok, info.mean, info.std)

    register_dataset(DatasetInfo(
        name="toy", description="a test entry", num_classes=2, classes=("no", "yes"), channels=1,
        image_size=6, train_size=4, test_size=2, hflip_ok=False, source="this test",
        mean=(0.5,), std=(0.25,), loader=load_toy))
    assert "toy" in list_datasets()
    assert get_dataset_info("toy").recipe == dict(epochs=10, batch_size=128, translate=0)
    test = load_dataset("toy", "test")
    assert len(test) == 2 and test.classes == ["no", "yes"] and test.mean == (0.5,)
