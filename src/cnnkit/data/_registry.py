"""A data-set registry that fails loudly, like the model registry (STYLE.md habit 2).

One `DatasetInfo` entry holds everything cnnkit knows about a data set: what it is, its files and
their MD5s, its class names and statistics, its default training recipe, and the function that
loads it. `datasets.py` registers one entry per data set; nothing else needs to change to add one.
The entry gathers what torchvision spreads over each dataset class (`resources = [(url, md5)]`,
`classes` in torchvision/datasets/mnist.py) into one record.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

from cnnkit.utils import suggest

# Training defaults for an entry that gives none; TrainConfig fills the fields left unset from it.
DEFAULT_RECIPE: dict[str, Any] = dict(epochs=10, batch_size=128, translate=0)

_MD5 = re.compile(r"[0-9a-f]{32}")
TASKS = ("classify", "segment", "detect", "translate", "pose")


@dataclass(frozen=True, kw_only=True)
class DatasetInfo:
    """One registered data set: static facts, files, statistics, recipe and loader."""

    name: str
    description: str
    num_classes: int  # 0: decided by the data (imagefolder)
    classes: tuple[str, ...] | None = None  # None: the data names them (an archive, folders)
    channels: int
    image_size: int  # native side in pixels; 0: varies
    train_size: int  # 0: varies
    test_size: int
    hflip_ok: bool  # a horizontal flip keeps the label (photos yes; digits and characters no)
    # Official URL: the folder holding `files`, or the single file itself; else where the data
    # comes from, in words.
    source: str
    files: dict[str, str] = field(default_factory=dict, hash=False)  # file name → MD5 (hex)
    # Per-channel training-set mean/std on the 0..1 scale; None: computed from the training data.
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    # TrainConfig defaults: epochs, batch_size, translate (pixels of random shift).
    recipe: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_RECIPE), hash=False)
    # (info, split, *, data_dir, mirror, download, image_size, channels, quiet) -> ArrayDataset,
    # a SegmentationDataset for task "segment", a DetectionDataset for task "detect" (whose
    # loaders also take skip_bad)
    loader: Callable[..., Any]
    # "classify": one label per image (ArrayDataset); "segment": one per pixel (SegmentationDataset);
    # "detect": boxes, and masks or keypoints where the set has them (DetectionDataset).
    # "translate": two unpaired domains, A and B (data/unpaired.py's UnpairedDataset).
    # "pose": one person per image, its joints (data/lsp.py's PoseDataset); classes = joint names.
    task: str = "classify"
    splits: tuple[str, ...] = ("train", "test")  # load_dataset's (camvid, detfolder: + "val")
    # Pose sets: the limbs (pairs of 0-based joints) and the left/right joint pairs a flip swaps.
    skeleton: tuple[tuple[int, int], ...] = ()
    flip_pairs: tuple[tuple[int, int], ...] = ()

    def __post_init__(self):
        # Checked here, at import, so that a typo fails every test rather than one download.
        for filename, md5 in self.files.items():
            if not _MD5.fullmatch(md5):
                raise ValueError(f"data set '{self.name}': file {filename} has MD5 '{md5}'; "
                                 f"give the 32 lower-case hex digits `md5sum` prints")
        if self.classes is not None and len(self.classes) != self.num_classes:
            raise ValueError(f"data set '{self.name}': {len(self.classes)} class names for "
                             f"num_classes={self.num_classes}; make them agree")
        if self.task not in TASKS:
            raise ValueError(f"data set '{self.name}': task '{self.task}'; choose from "
                             f"{', '.join(TASKS)}")
        for stats in (self.mean, self.std):
            if stats is not None and len(stats) != self.channels:
                raise ValueError(f"data set '{self.name}': mean/std need {self.channels} values "
                                 f"(one per channel), got {stats}")


_DATASETS: dict[str, DatasetInfo] = {}


def register_dataset(info: DatasetInfo) -> DatasetInfo:
    """Add `info` under `info.name`; a name registered twice raises."""
    if info.name in _DATASETS:
        raise ValueError(f"data set '{info.name}' is registered twice; give the new entry "
                         f"another name")
    _DATASETS[info.name] = info
    return info


def list_datasets() -> list[str]:
    """Registered data-set names, sorted."""
    return sorted(_DATASETS)


# "FORMAT:PATH" names (`--dataset yolo:data/signs`): FORMAT → a function (name, path) that makes
# the entry, so a user's folder needs no registration of its own.
_PATH_FORMATS: dict[str, Callable[[str, str], DatasetInfo]] = {}


def register_path_format(prefix: str, factory: Callable[[str, str], DatasetInfo]) -> None:
    """Let `get_dataset_info("<prefix>:PATH")` return `factory(name, PATH)`."""
    if prefix in _PATH_FORMATS:
        raise ValueError(f"data set format '{prefix}:' is registered twice")
    _PATH_FORMATS[prefix] = factory


def get_dataset_info(name: str) -> DatasetInfo:
    """The entry of `name` (or of a "FORMAT:PATH" name, e.g. "coco-json:data/mine"); an unknown
    name raises a CnnkitError listing the closest ones."""
    prefix, sep, path = name.partition(":")
    if sep and prefix in _PATH_FORMATS and name not in _DATASETS:
        return _PATH_FORMATS[prefix](name, path)
    if name not in _DATASETS:
        raise suggest(name, _DATASETS, "data set")
    return _DATASETS[name]
