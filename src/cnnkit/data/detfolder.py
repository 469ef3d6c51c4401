"""The user's own detection folder (the `detfolder` data set): COCO, VOC or YOLO, per split.

Layout (data_dir = ROOT):

    ROOT/train/   required; its categories are the classes, labels 1..K in its order
    ROOT/test/    the test split (ROOT/val stands in when there is no test/, as for segfolder)
    ROOT/val/     optional; load_dataset("detfolder", "val")

each split folder holding exactly one of

    COCO   annotations.json, the images beside it or in images/ (file_name relative to that
           folder, or to the split folder: images/x.jpg)
    VOC    *.xml beside the images, or annotations/*.xml + images/; classes.txt beside the XML
           gives the class order (else the names found, sorted)
    YOLO   labels/*.txt + images/; class names in classes.txt, obj.names or data.yaml, in
           labels/, the split folder or ROOT

The format is read from what the folder holds; none of these, or more than one, is a one-line
error. The class order is the train split's: COCO's category ids, VOC's classes.txt, YOLO's names
file. Another split is matched to it by category name, so its own ids or order may differ: an
object of a category the train split lacks is a bad entry, named in one line; a category listed
but used by no object is ignored. Every bad entry (det_annotations.assemble's checks, a missing or
unreadable image) is one CnnkitError line prefixed with the split; with skip_bad=True it is left
out and the line kept in the DetectionDataset's `skipped`.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import torch

from cnnkit.data.det_annotations import Annotations, Problems
from cnnkit.data.det_coco import read_coco
from cnnkit.data.det_formats import read_voc, read_yolo
from cnnkit.data.detection import DetectionDataset, from_annotations
from cnnkit.utils import CnnkitError, suggest

SPLITS = ("train", "val", "test")
COCO_FILE = "annotations.json"
LAYOUT = ("ROOT/train and ROOT/test, each with COCO annotations.json (+ images/), VOC *.xml "
          "(or annotations/*.xml + images/), or YOLO labels/*.txt + images/ + classes.txt")
# The target entries that hold one row per object (image_id is one per image).
PER_OBJECT = ("boxes", "labels", "iscrowd", "masks", "keypoints")


def load_detection_folder(root: str | Path, split: str = "train", *, skip_bad: bool = False,
                          quiet: bool = True) -> DetectionDataset:
    """Decode split `split` ("train", "val" or "test") of a folder laid out as the module
    docstring describes. skip_bad: leave bad entries out (listed in `.skipped`) rather than stop
    at the first with a one-line CnnkitError."""
    root = Path(root).expanduser()
    if split not in SPLITS:
        raise suggest(split, SPLITS, "split")
    if not root.is_dir():
        raise CnnkitError(f"detection folder {root} does not exist; expected {LAYOUT}")
    folder = _split_folder(root, split)
    ann, images = read_split(folder, skip_bad=skip_bad)
    # Another split's loader reads the train split only for its classes: its bad entries are
    # reported when the train split itself is loaded, not twice.
    train = ann if folder.name == "train" else \
        read_split(_split_folder(root, "train"), skip_bad=True)[0]
    if not train.classes:
        raise CnnkitError(f"train split: {root / 'train'} names no category (no object, no "
                          f"classes.txt); the train split's categories are the classes")
    if train is not ann:
        with _named(folder):
            ann = _align(ann, train, Problems(skip_bad))
    with _named(folder):
        # Named after the folder, as segfolder's sets are: messages and figures show it.
        ds = from_annotations(ann, images, name=root.name, skip_bad=skip_bad, quiet=quiet)
    # The same prefix as a raised error: train/ and test/ hold files of the same names.
    ds.skipped = [f"{folder.name} split: {line}" for line in ds.skipped]
    if not len(ds):
        first = f"; the first of {len(ds.skipped)} skipped: {ds.skipped[0]}" if ds.skipped else ""
        raise CnnkitError(f"{folder.name} split: no usable image in {folder}{first}")
    return ds


def _split_folder(root: Path, split: str) -> Path:
    """ROOT/<split>; for "test", ROOT/val when there is no ROOT/test."""
    names = ("test", "val") if split == "test" else (split,)
    for name in names:
        if (root / name).is_dir():
            return root / name
    wanted = " or ".join(f"{name}/" for name in names)
    raise CnnkitError(f"{root} has no {wanted} folder for the {split} split; expected {LAYOUT}")


def read_split(folder: Path, *, skip_bad: bool = False) -> tuple[Annotations, Path]:
    """(the annotations of one split folder, in whichever format it holds; its image folder).
    Errors are prefixed with the split's name."""
    with _named(folder):
        fmt, source, images = detect_format(folder)
        if fmt == "coco":
            ann = read_coco(source, skip_bad=skip_bad)
            # Some tools (Label Studio) write file_name as images/x.jpg, relative to the JSON.
            first = ann.images[0].file_name if ann.images else ""
            if first and not (images / first).is_file() and (folder / first).is_file():
                images = folder
        elif fmt == "voc":
            # The image folder: for the sizes an XML leaves out (YOLO's boxes are fractions
            # of the size, so it always needs them).
            ann = read_voc(source, images=images, skip_bad=skip_bad)
        else:
            ann = read_yolo(source, images=images, skip_bad=skip_bad)
    return ann, images


def detect_format(folder: Path) -> tuple[str, Path, Path]:
    """(format, the COCO file or the folder of XML / txt files, the image folder) of a split
    folder; a one-line CnnkitError when it holds no annotations or more than one kind."""
    # Labelling tools put the photos beside their annotations or in images/, whatever the format.
    images = folder / "images" if (folder / "images").is_dir() else folder
    found = []  # (format, source, how the folder shows it)
    if (folder / COCO_FILE).is_file():
        found.append(("coco", folder / COCO_FILE, f"{COCO_FILE} (COCO)"))
    for xml in (folder, folder / "annotations"):
        if xml.is_dir() and any(xml.glob("*.xml")):
            found.append(("voc", xml, f"{xml.relative_to(folder.parent)}/*.xml (VOC)"))
    if (folder / "labels").is_dir():
        found.append(("yolo", folder / "labels", "labels/ (YOLO)"))
    if not found:
        raise CnnkitError(f"{folder} holds no annotations: expected {COCO_FILE} (COCO), *.xml or "
                          f"annotations/*.xml (VOC), or labels/*.txt + images/ (YOLO)")
    if len(found) > 1:
        shown = " and ".join(what for _, _, what in found)
        raise CnnkitError(f"{folder} holds {shown}: keep one set of annotations per split")
    fmt, source, _ = found[0]
    return fmt, source, images


def _align(ann: Annotations, train: Annotations, problems: Problems) -> Annotations:
    """`ann` relabelled into the train split's classes, matched by category name; an object of
    a category the train split lacks goes to `problems`."""
    if ann.keypoint_names != train.keypoint_names:
        raise CnnkitError(f"keypoints {ann.keypoint_names} differ from the train split's "
                          f"{train.keypoint_names}")
    # By name, not by id or index: a split exported on its own numbers its categories its own
    # way (COCO ids in creation order, a YOLO classes.txt in another order).
    label_of = {name: label for label, name in enumerate(train.classes, 1)}
    problems.skipped = list(ann.skipped)  # the reader's skipped lines stay first
    targets = []
    for entry, target in zip(ann.images, ann.targets):
        keep, labels = [], []
        for n, label in enumerate(target["labels"].tolist()):
            name = ann.classes[label - 1]
            if name not in label_of:
                problems(f"{entry.where}, object {n + 1}", f"category {name!r} is not among the "
                         f"train split's classes ({', '.join(train.classes)})")
                continue
            keep.append(n)
            labels.append(label_of[name])
        index = torch.tensor(keep, dtype=torch.int64)
        aligned = {k: v[index] if k in PER_OBJECT else v for k, v in target.items()}
        aligned["labels"] = torch.tensor(labels, dtype=torch.int64)
        targets.append(aligned)
    return replace(ann, classes=train.classes, category_ids=list(train.category_ids),
                   targets=targets, skipped=problems.skipped)


@contextmanager
def _named(folder: Path):
    """Prefix a CnnkitError with the split it comes from: train/ and test/ often hold files of
    the same name (annotations.json, classes.txt)."""
    try:
        yield
    except CnnkitError as err:
        raise CnnkitError(f"{folder.name} split: {err}") from None
