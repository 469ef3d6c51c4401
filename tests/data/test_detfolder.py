"""The user's detection folder (`detfolder`): real raccoon photos with their annotations written
by cnnkit's own writers in each of the three formats, loaded back through load_dataset; format
detection, unknown test categories and bad entries as one line, or skipped with skip_bad."""
from __future__ import annotations

import shutil
from dataclasses import replace

import pytest
import torch

from cnnkit.data import load_dataset
from cnnkit.data.det_annotations import Annotations, ImageEntry
from cnnkit.data.det_coco import write_coco
from cnnkit.data.det_formats import read_voc, write_voc, write_yolo
from cnnkit.utils import CnnkitError
from tests.conftest import DATASETS

RACCOON = DATASETS / "raccoon"
# raccoon-12 (train) and raccoon-72 (test) hold two boxes each.
NAMES = {"train": ["raccoon-1.jpg", "raccoon-2.jpg", "raccoon-3.jpg", "raccoon-12.jpg"],
         "test": ["raccoon-5.jpg", "raccoon-72.jpg"]}
CLASSES = ("raccoon", "dog")  # "dog" is listed, never used: the class list is the file's
LAYOUTS = ("coco", "coco-flat", "voc", "voc-flat", "yolo")


@pytest.fixture(scope="module")
def source() -> dict[str, Annotations]:
    """The real annotations of the six photos: train in (raccoon, dog) with COCO ids 5 and 9;
    test in another order, (dog, raccoon) with ids 1 and 2, which the loader must map back."""
    out = {}
    for split, names in NAMES.items():
        ann = read_voc(RACCOON / "annotations", files=names, classes=CLASSES)
        out[split] = replace(ann, category_ids=[5, 9])
    out["test"] = _relabelled(out["test"], ("dog", "raccoon"), {1: 2})
    return out


def _relabelled(ann: Annotations, classes, mapping) -> Annotations:
    targets = [{**t, "labels": torch.tensor([mapping[int(v)] for v in t["labels"]])}
               for t in ann.targets]
    return replace(ann, classes=tuple(classes), category_ids=list(range(1, len(classes) + 1)),
                   targets=targets)


def _write(root, layout: str, splits: dict[str, Annotations]):
    """ROOT/<split> in `layout`: annotations by cnnkit's writers, the photos copied beside."""
    for split, ann in splits.items():
        folder = root / split
        flat = layout.endswith("-flat")  # images beside the annotations, no images/
        images = folder if flat else folder / "images"
        images.mkdir(parents=True)
        for entry in ann.images:
            if (RACCOON / "images" / entry.file_name).is_file():
                shutil.copyfile(RACCOON / "images" / entry.file_name, images / entry.file_name)
        if layout.startswith("coco"):
            write_coco(ann, folder / "annotations.json")
        elif layout.startswith("voc"):
            write_voc(ann, folder if flat else folder / "annotations")
        else:
            write_yolo(ann, folder / "labels")
    return root


def _one_line(err) -> str:
    assert "\n" not in str(err.value)
    return str(err.value)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_format_loads_the_same_boxes_labels_and_classes(tmp_path, source, layout):
    root = _write(tmp_path, layout, source)
    for split, names in NAMES.items():
        ds = load_dataset("detfolder", split, data_dir=root, quiet=True)
        # VOC and YOLO list their files sorted by name, COCO in the file's order.
        assert ds.classes == CLASSES and sorted(ds.file_names) == sorted(names)
        assert ds.skipped == []
        if layout.startswith("coco"):  # the train split's ids, also for the test split
            assert ds.category_ids == [5, 9]
        written = {e.file_name: t for e, t in zip(source[split].images, source[split].targets)}
        for name, image, target in zip(ds.file_names, ds.images, ds.targets):
            expected = written[name]
            # Test objects were written as label 2 of (dog, raccoon): back to raccoon = 1.
            assert target["labels"].tolist() == [1] * len(expected["boxes"])
            # YOLO keeps 6 decimals of the normalised coordinates: < 0.001 px here.
            assert torch.allclose(target["boxes"], expected["boxes"], atol=1e-3)
            assert image.dtype == torch.uint8 and image.shape[0] == 3
    assert [len(t["boxes"]) for t in ds.targets] == [1, 2]  # raccoon-72: two raccoons


def test_format_and_layout_errors_are_one_line(tmp_path, source):
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(CnnkitError) as err:
        load_dataset("detfolder", "train", data_dir=tmp_path / "empty")
    assert _one_line(err).startswith("train split: ") and "holds no annotations" in str(err.value)
    # COCO and YOLO annotations in one split: which to believe is not guessed.
    both = _write(tmp_path / "both", "coco", {"train": source["train"]})
    write_yolo(source["train"], both / "train" / "labels")
    with pytest.raises(CnnkitError) as err:
        load_dataset("detfolder", "train", data_dir=both)
    assert "annotations.json (COCO) and labels/ (YOLO)" in _one_line(err)
    with pytest.raises(CnnkitError) as err:
        load_dataset("detfolder", "test", data_dir=both)
    assert "has no test/ or val/ folder" in _one_line(err)
    with pytest.raises(CnnkitError) as err:
        load_dataset("detfolder", "train")  # data_dir left at the download cache
    assert "detfolder needs data_dir" in _one_line(err)
    # ROOT/val stands in for a missing ROOT/test, and is a split of its own.
    val = _write(tmp_path / "val", "voc", {"train": source["train"], "val": source["test"]})
    for split in ("test", "val"):
        assert load_dataset("detfolder", split, data_dir=val).file_names == NAMES["test"]
    # A COCO file_name relative to the split folder (images/x.jpg, as Label Studio writes it).
    train = source["train"]
    prefixed = replace(train, images=[replace(e, file_name=f"images/{e.file_name}")
                                      for e in train.images])
    studio = _write(tmp_path / "studio", "coco", {"train": train})
    write_coco(prefixed, studio / "train" / "annotations.json")
    assert load_dataset("detfolder", "train", data_dir=studio).file_names == [
        f"images/{name}" for name in NAMES["train"]]


@pytest.mark.parametrize("layout", ["coco", "voc", "yolo"])
def test_a_test_category_the_train_split_lacks_is_named(tmp_path, source, layout):
    test = _relabelled(source["test"], ("raccoon", "cat"), {2: 2})  # every test box a cat
    root = _write(tmp_path, layout, {"train": source["train"], "test": test})
    with pytest.raises(CnnkitError) as err:
        load_dataset("detfolder", "test", data_dir=root)
    message = _one_line(err)
    assert message.startswith("test split: ") and "category 'cat' is not among the train " \
        "split's classes (raccoon, dog)" in message
    ds = load_dataset("detfolder", "test", data_dir=root, skip_bad=True)
    assert len(ds) == 2 and ds.num_objects() == 0 and len(ds.skipped) == 3
    assert all("'cat'" in line for line in ds.skipped)


@pytest.mark.parametrize("layout", ["coco", "voc", "yolo"])
def test_bad_entries_stop_in_one_line_or_are_skipped(tmp_path, source, layout):
    train = source["train"]
    first = dict(train.targets[0])  # raccoon-1, 650×417: its box now ends 50 px right of it
    first["boxes"] = first["boxes"].clone()
    first["boxes"][0, 2] = 650 + 50
    missing = ImageEntry("raccoon-missing.jpg", 100, 100, 99, "raccoon-missing.jpg")
    ghost = {**train.targets[1], "image_id": 99, "boxes": torch.tensor([[10.0, 10, 50, 50]])}
    bad = replace(train, images=train.images + [missing],
                  targets=[first, *train.targets[1:], ghost])
    root = _write(tmp_path, layout, {"train": bad, "test": source["test"]})
    with pytest.raises(CnnkitError) as err:
        load_dataset("detfolder", "train", data_dir=root)
    assert _one_line(err).startswith("train split: ") and "lies outside the 650×417 image" \
        in str(err.value)
    ds = load_dataset("detfolder", "train", data_dir=root, skip_bad=True, quiet=True)
    boxes = {name: len(t["boxes"]) for name, t in zip(ds.file_names, ds.targets)}
    # The four photos, raccoon-1 without its one (bad) box.
    assert boxes == {"raccoon-1.jpg": 0, "raccoon-2.jpg": 1, "raccoon-3.jpg": 1,
                     "raccoon-12.jpg": 2}
    assert len(ds.skipped) == 2 and all(line.startswith("train split: ") for line in ds.skipped)
    assert "lies outside the 650×417 image" in ds.skipped[0]
    assert "missing image" in ds.skipped[1] and "raccoon-missing" in ds.skipped[1]
    # The test split is fine, and its load does not repeat the train split's problems.
    assert load_dataset("detfolder", "test", data_dir=root, skip_bad=True).skipped == []


def test_skip_bad_reaches_every_detection_loader_and_no_other():
    # image_size is refused before anything is read: the loaders accepted the keyword.
    for name in ("raccoon", "oxford-pets-det", "mnist-det", "detfolder"):
        with pytest.raises(CnnkitError, match="keeps its images' own size"):
            load_dataset(name, "test", data_dir=DATASETS, image_size=64, skip_bad=True)
    with pytest.raises(CnnkitError) as err:
        load_dataset("digits", "train", skip_bad=True)
    assert "skip_bad (--skip-bad) is for detection data sets; digits is a classify set" \
        == _one_line(err)
