"""Detection data: the registered raccoon and oxford-pets-det sets checked against their files,
the DetectionDataset contract, the checks every format reader goes through, and the loader."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cnnkit.data import get_dataset_info, load_dataset
from cnnkit.data.det_augment import DetectionAugment
from cnnkit.data.det_loader import DetectionLoader, prefetched
from cnnkit.data.det_annotations import ImageEntry, ObjectEntry, Problems, assemble
from cnnkit.data.detection import (COCO_PERSON_KEYPOINTS, DetectionDataset, flip_index_from_names,
                                   from_annotations)
from cnnkit.utils import CnnkitError
from tests.conftest import DATASETS

RACCOON, PETS = DATASETS / "raccoon", DATASETS / "oxford-pets-sample"


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def raccoon():
    return {split: load_dataset("raccoon", split, data_dir=DATASETS, quiet=True)
            for split in ("train", "test")}


@pytest.fixture(scope="module")
def pets():
    return {split: load_dataset("oxford-pets-det", split, data_dir=DATASETS, quiet=True)
            for split in ("train", "test")}


def _in_format(ds: DetectionDataset) -> None:
    """Every sample in the common format: dtypes, shapes, boxes inside with positive size."""
    k = len(ds.classes)
    for (h, w), image, t in zip(ds.image_sizes(), ds.images, ds.targets):
        assert image.dtype == torch.uint8 and image.shape == (3, h, w)
        boxes, n = t["boxes"], len(t["boxes"])
        assert boxes.dtype == torch.float32 and boxes.shape == (n, 4)
        assert (boxes[:, 2:] > boxes[:, :2]).all() and boxes.min() >= 0
        assert (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
        assert t["labels"].dtype == torch.int64 and ((t["labels"] >= 1) & (t["labels"] <= k)).all()
        assert t["iscrowd"].shape == (n,) and isinstance(t["image_id"], int)


# --- the registered sets ---

def test_raccoon_splits_hold_the_217_boxes_of_the_readme(raccoon):
    train, test = raccoon["train"], raccoon["test"]
    info = get_dataset_info("raccoon")
    assert info.task == "detect" and (len(train), len(test)) == (info.train_size,
                                                                  info.test_size) == (160, 40)
    assert train.file_names == (RACCOON / "train.txt").read_text().split()
    assert test.file_names == (RACCOON / "test.txt").read_text().split()
    # README.txt: 217 boxes, train 173 / test 44, one class.
    assert (train.num_objects(), test.num_objects()) == (173, 44)
    assert train.classes == ("raccoon",) and train.category_ids == [1]
    for ds in (train, test):
        _in_format(ds)
        assert "masks" not in ds.targets[0] and not ds.skipped
    # raccoon-1.xml: xmin 81 ymin 88 xmax 522 ymax 408 (1-based) in a 650×417 image.
    first = train.targets[train.file_names.index("raccoon-1.jpg")]
    assert first["boxes"].tolist() == [[80.0, 87.0, 522.0, 408.0]]
    assert train.images[0].shape == (3, 417, 650)
    pixels = np.asarray(Image.open(RACCOON / "images" / "raccoon-1.jpg").convert("RGB"))
    assert np.array_equal(train.images[0].permute(1, 2, 0).numpy(), pixels)
    # A greyscale photo (mode L, README) becomes three equal channels.
    grey = train.images[train.file_names.index("raccoon-150.jpg")]
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])


def test_oxford_pets_det_one_instance_per_photo_from_its_trimap(pets):
    train, test = pets["train"], pets["test"]
    assert (len(train), len(test)) == (300, 298)
    assert train.classes == get_dataset_info("oxford-pets-det").classes == (
        "Abyssinian", "american_bulldog", "Bengal")
    assert train.category_ids == [1, 2, 6]  # the CLASS-IDs of list.txt
    for ds in (train, test):
        _in_format(ds)
        for name, t in zip(ds.file_names, ds.targets):
            assert len(t["boxes"]) == 1 and t["masks"].shape[0] == 1
            assert ds.classes[int(t["labels"][0]) - 1] == name.rsplit("_", 1)[0]
            ys, xs = np.nonzero(t["masks"][0].numpy())  # box = the mask's extent
            assert t["boxes"][0].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    counts = torch.bincount(torch.cat([t["labels"] for t in test.targets]))
    assert counts.tolist() == [0, 98, 100, 100]  # README: test 298, Abyssinian 98
    # The mask is the pet and its border band: trimap values 1 and 3 (not 2, background).
    stem = test.file_names[5].removesuffix(".jpg")
    trimap = np.asarray(Image.open(PETS / "annotations" / "trimaps" / f"{stem}.png"))
    assert np.array_equal(test.targets[5]["masks"][0].numpy(), (trimap != 2).astype(np.uint8))
    assert set(np.unique(trimap)) == {1, 2, 3}


def test_detection_sets_refuse_resizing():
    with pytest.raises(CnnkitError, match="keeps its images' own size"):
        load_dataset("raccoon", "test", data_dir=DATASETS, image_size=64)


# --- DetectionDataset ---

def _toy(n=5, masks=False) -> DetectionDataset:
    images = [torch.full((3, 10 + i, 20), i, dtype=torch.uint8) for i in range(n)]
    targets = []
    for i in range(n):
        t = {"boxes": torch.tensor([[1.0, 2.0, 5.0, 6.0]] * (i % 3)), "labels": [1, 2][: i % 3]}
        if masks:
            t["masks"] = torch.zeros(i % 3, 10 + i, 20, dtype=torch.uint8)
        targets.append(t)
    return DetectionDataset(images, targets, ("a", "b"), "toy")


def test_dataset_fills_defaults_and_subsets():
    ds = _toy()
    assert ds.category_ids == [1, 2] and ds.file_names == ["0", "1", "2", "3", "4"]
    t = ds.targets[2]
    assert t["labels"].dtype == torch.int64 and t["iscrowd"].tolist() == [0, 0]
    assert t["image_id"] == 3 and ds.image_sizes()[2] == (12, 20)
    sub = ds.subset(torch.tensor([4, 1]))
    assert len(sub) == 2 and sub.file_names == ["4", "1"] and sub.image_sizes() == [(14, 20),
                                                                                     (11, 20)]
    image, target = sub[1]
    assert image is ds.images[1] and target["image_id"] == 2
    assert ds.subset(range(0, 5, 2)).file_names == ["0", "2", "4"]


def test_dataset_refuses_malformed_targets():
    images = [torch.zeros(3, 8, 8, dtype=torch.uint8)]
    with pytest.raises(ValueError, match="labels must be 1 values in 1..2"):
        DetectionDataset(images, [{"boxes": [[0, 0, 4, 4]], "labels": [0]}], ("a", "b"))
    with pytest.raises(ValueError, match="inside the 8×8 image"):
        DetectionDataset(images, [{"boxes": [[0, 0, 9, 4]], "labels": [1]}], ("a", "b"))
    with pytest.raises(ValueError, match="uint8 \\(3, H, W\\)"):
        DetectionDataset([torch.zeros(1, 8, 8, dtype=torch.uint8)],
                         [{"boxes": [], "labels": []}], ("a",))


def test_flip_index_swaps_left_and_right():
    flip = flip_index_from_names(COCO_PERSON_KEYPOINTS)
    assert flip[:5] == [0, 2, 1, 4, 3] and flip[15:] == [16, 15]
    assert flip_index_from_names(["head", "l_hand", "r_hand"]) == [0, 2, 1]


# --- the checks of every reader ---

def _entries():
    return {1: ImageEntry("a.jpg", 10, 20, 1, "ann.json, image id 1")}


@pytest.mark.parametrize("obj, message", [
    (ObjectEntry(7, "cat", (0, 0, 5, 5), "ann.json, annotation 3"),
     "ann.json, annotation 3: annotation for a missing image (7 is not among the images)"),
    (ObjectEntry(1, "dog", (0, 0, 5, 5), "ann.json, annotation 4"),
     "ann.json, annotation 4: unknown category 'dog'"),
    (ObjectEntry(1, "cat", (0, 0, 25, 5), "ann.json, annotation 5"),
     "ann.json, annotation 5: box (x1, y1, x2, y2) = (0, 0, 25, 5) lies outside the 20×10 image"),
    (ObjectEntry(1, "cat", (4, 0, 4, 5), "ann.json, annotation 6"),
     "ann.json, annotation 6: box (x1, y1, x2, y2) = (4, 0, 4, 5) has non-positive size"),
    (ObjectEntry(1, "cat", (0, 0, 5, 5), "ann.json, annotation 7",
                 mask=np.ones((10, 10), np.uint8)),
     "ann.json, annotation 7: mask is 10×10 but the image a.jpg is 20×10"),
])
def test_each_bad_entry_is_one_line_or_skipped(obj, message):
    good = ObjectEntry(1, "cat", (2, 2, 6, 6), "ann.json, annotation 1")
    kwargs = dict(classes=["cat"], category_ids=[1])
    with pytest.raises(CnnkitError) as err:
        assemble(_entries(), [good, obj], {"cat": 1}, problems=Problems(), **kwargs)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    ann = assemble(_entries(), [good, obj], {"cat": 1}, problems=Problems(skip_bad=True), **kwargs)
    assert ann.num_objects() == 1 and ann.targets[0]["boxes"].tolist() == [[2, 2, 6, 6]]
    assert len(ann.skipped) == 1 and ann.skipped[0].startswith(message)


def test_boxes_within_a_pixel_are_clipped_and_masks_fill_in():
    objects = [ObjectEntry(1, "cat", (-0.5, 0, 20.8, 10), "o1", mask=np.ones((10, 20))),
               ObjectEntry(1, "cat", (2, 3, 6, 8), "o2", iscrowd=1)]
    ann = assemble(_entries(), objects, {"cat": 1}, classes=["cat"], category_ids=[1],
                   problems=Problems())
    t = ann.targets[0]
    assert t["boxes"].tolist() == [[0, 0, 20, 10], [2, 3, 6, 8]]
    assert t["iscrowd"].tolist() == [0, 1]
    # An object without a mask in a set with masks gets its box as its mask.
    assert t["masks"][1].sum() == 20 and t["masks"][1, 3:8, 2:6].all()


def test_images_missing_or_of_another_size_are_named(tmp_path):
    Image.new("RGB", (20, 10)).save(tmp_path / "a.jpg")
    Image.new("L", (7, 5)).save(tmp_path / "b.png")
    entries = {1: ImageEntry("a.jpg", 10, 20, 1, "ann.json, image 1"),
               2: ImageEntry("b.png", 10, 20, 2, "ann.json, image 2"),
               3: ImageEntry("c.jpg", 10, 20, 3, "ann.json, image 3")}
    ann = assemble(entries, [], {}, classes=[], category_ids=[], problems=Problems())
    with pytest.raises(CnnkitError, match=r"^ann.json, image 2: says the image is 20×10 but "
                                          r".*b.png is 7×5$"):
        from_annotations(ann, tmp_path)
    ds = from_annotations(ann, tmp_path, skip_bad=True)
    assert ds.file_names == ["a.jpg"] and len(ds.skipped) == 2
    assert ds.skipped[1].startswith("ann.json, image 3: annotations for a missing image")


# --- the loader ---

def test_loader_batches_are_lists_of_float_images_and_target_copies():
    ds = _toy(5)
    loader = DetectionLoader(ds, 2)
    batches = list(loader)
    assert len(loader) == len(batches) == 3 and [len(b[0]) for b in batches] == [2, 2, 1]
    images, targets = batches[0]
    assert images[1].dtype == torch.float32 and torch.allclose(images[1], ds.images[1] / 255)
    targets[1]["labels"] = None  # a consumer's change stays in its copy
    assert ds.targets[1]["labels"].tolist() == [1]
    assert len(DetectionLoader(ds, 2, drop_last=True)) == 2


def test_loader_order_and_augmentation_follow_seed_and_epoch(raccoon):
    ds = raccoon["test"].subset(range(16))
    augment = DetectionAugment(hflip=True, scale=(0.25, 0.5), colour=0.2)

    def epoch(seed, number):
        loader = DetectionLoader(ds, 8, shuffle=True, seed=seed, augment=augment)
        loader.set_epoch(number)
        return [(im, t) for images, targets in loader for im, t in zip(images, targets)]

    torch.manual_seed(123)
    first = epoch(0, 1)
    torch.manual_seed(456)  # the global RNG plays no part
    again = epoch(0, 1)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1]["boxes"], b[1]["boxes"])
               for a, b in zip(first, again))
    ids = [t["image_id"] for _, t in first]
    assert sorted(ids) == sorted(t["image_id"] for t in ds.targets)  # each image once
    assert ids != [t["image_id"] for _, t in epoch(0, 2)]
    assert ids != [t["image_id"] for _, t in epoch(1, 1)]


def test_prefetching_gives_the_same_batches(raccoon):
    ds = raccoon["test"].subset(range(12))
    augment = DetectionAugment(hflip=True, scale=(0.25, 0.5), colour=0.2)
    plain, ahead = (DetectionLoader(ds, 4, shuffle=True, seed=5, augment=augment, prefetch=p)
                    for p in (0, 2))
    for (images, targets), (images2, targets2) in zip(plain, ahead, strict=True):
        assert all(torch.equal(a, b) for a, b in zip(images, images2, strict=True))
        assert all(torch.equal(a["boxes"], b["boxes"]) for a, b in zip(targets, targets2))


def test_prefetching_raises_the_producers_error_and_stops_when_left():
    def items():
        yield 1
        raise ValueError("decoding failed")

    with pytest.raises(ValueError, match="decoding failed"):
        list(prefetched(items(), 2))
    produced = []

    def endless():
        while True:
            produced.append(len(produced))
            yield produced[-1]

    stream = prefetched(endless(), 2)
    assert [next(stream) for _ in range(3)] == [0, 1, 2]
    stream.close()  # the producer stops: at most the queue's depth and one item ahead
    count = len(produced)
    assert count <= 3 + 2 + 1 and len(produced) == count


def test_without_drops_a_target_key():
    ds = _toy(3, masks=True)
    stripped = ds.without("masks")
    assert all("masks" not in t and "boxes" in t for t in stripped.targets)
    assert all("masks" in t for t in ds.targets)  # the original keeps its targets


@pytest.mark.parametrize("n, world", [(6, 2), (6, 3), (7, 2)])
def test_shards_partition_the_epoch(n, world):
    ds = _toy(n)
    shards = []
    for rank in range(world):
        loader = DetectionLoader(ds, 2, shuffle=True, seed=3, rank=rank, world_size=world)
        shards.append([t["image_id"] for _, targets in loader for t in targets])
    assert len({len(s) for s in shards}) == 1  # equal shares, as DistributedSampler gives
    seen = sum(shards, [])
    assert sorted(set(seen)) == list(range(1, n + 1))
    if n % world == 0:
        assert sorted(seen) == list(range(1, n + 1))  # disjoint
