"""Image folders: ROOT/<class>/<image> files of any size and PIL mode, as a data set.

Layout: if ROOT/train exists, it and ROOT/test (or ROOT/val) are the splits; otherwise every image
under ROOT is split 80/20, stratified by class, with seed 0, so the test set is always the same.
`ImageFolderDataset` decodes one file per item (for `StreamingLoader`); `load_imagefolder` decodes
them all once into an `ArrayDataset`. Both use `decode_image`, so both give identical tensors.

Sizing follows torchvision's classification references (references/classification/presets.py):
for evaluation, the shorter side is resized to round(size / 0.875) keeping the aspect ratio (256
for 224) and the centre size × size kept; for training, random-resized crops. Images are decoded
once, so every split is stored as that evaluation crop, and training takes its random-resized
crops from the stored square (`train_crop_scale`, then augment.BatchAugment(resized_crop=...)
per batch): validation images, held out from the training split, are then exactly the
evaluation crop, and one tensor of one size serves all three. The price: training crops come
from the central 87.5 % of the shorter side, resampled from `size` pixels rather than the file's.
"""
from __future__ import annotations

import copy
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from cnnkit.data.array_dataset import (ArrayDataset, channel_stats, convert_channels,
                                       resize_images, stratified_split)
from cnnkit.utils import CnnkitError

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
TEST_FRACTION, SPLIT_SEED = 0.2, 0
STATS_SAMPLE = 2000  # training images (evenly spaced) that the normalisation statistics use
_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N", "I"}  # PNG's 16-bit grey opens as one of these
EVAL_CROP = 0.875  # torchvision's references: Resize(256), CenterCrop(224) (timm's crop_pct)
# Models built with small_input=true (CIFAR-style stems: no stride-2 stem, no max-pool, as in He
# et al. 2015 §4.2 and the DenseNet paper's CIFAR nets) are designed for 32×32 inputs: their
# final feature map is then 4×4. At 224 px they cost ~49× the compute for no designed benefit.
SMALL_INPUT_SIZE = 32
# Random-resized-crop areas: (0.08, 1) is torchvision's ImageNet recipe (Szegedy et al. 2014);
# folders below LARGE_FOLDER images (BiT's "HyperRule" threshold for small data sets, Kolesnikov
# et al. 2019, arXiv:1912.11370) get a milder (0.25, 1): a crop keeps at least half the side,
# so the object of a small folder's usually centred photos mostly stays in view.
RRC_SCALE, RRC_SCALE_SMALL, LARGE_FOLDER = (0.08, 1.0), (0.25, 1.0), 20_000


# --- decoding ---

class UnreadableImage(CnnkitError):
    """A file that is missing or cannot be decoded (a one-line CnnkitError like any other, so
    callers that skip unreadable files can tell them from other errors); `reason` is the
    decoder's word on it, without the path."""

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason


def _pixels(img: Image.Image) -> np.ndarray:
    """uint8 (H, W) grey or (H, W, 3) RGB from any PIL mode (alpha is dropped)."""
    if img.mode in _SIXTEEN_BIT:
        # convert("L") would clip 16-bit values at 255; scale the full 0..65535 range instead.
        wide = np.asarray(img, dtype=np.float64)
        return np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8)
    if img.mode == "F":  # float images: 0..1 when they fit, else taken as 0..255
        wide = np.asarray(img, dtype=np.float64)
        scale = 255.0 if wide.size and np.nanmax(wide) <= 1.0 else 1.0
        return np.clip(np.rint(np.nan_to_num(wide) * scale), 0, 255).astype(np.uint8)
    if img.mode in ("L", "RGB"):
        return np.asarray(img)
    if img.mode in ("1", "LA", "La"):
        return np.asarray(img.convert("L"))
    if img.mode == "P":  # a palette with a transparent entry must pass through RGBA (PIL warns)
        return np.asarray(img.convert("RGBA").convert("RGB"))
    return np.asarray(img.convert("RGB"))  # RGBA, CMYK, YCbCr, ...


def read_pixels(path: str | Path) -> np.ndarray:
    """The file's pixels, (H, W) grey or (H, W, 3) RGB uint8; a missing or undecodable file is a
    one-line CnnkitError."""
    try:
        with Image.open(path) as img:
            img.load()
            return _pixels(img)
    except FileNotFoundError:
        raise UnreadableImage(f"image {path} not found", "not found") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        reason = _reason(err, path)
        raise UnreadableImage(f"cannot decode image {path} ({reason}); remove or replace the "
                              f"file", reason) from None


def _reason(err: Exception, path: str | Path) -> str:
    """PIL's message without the path it often repeats (the caller names the file)."""
    text = str(err).replace(f"'{path}'", "").replace(str(path), "").strip(" :")
    return text or type(err).__name__


def header_problem(path: str | Path) -> str | None:
    """Why `path` is not an image, from its header alone (cheap: no pixels are decoded), or
    None when the header reads. A file cut short after a valid header passes this check."""
    try:
        with Image.open(path) as img:
            img.size  # noqa: B018  (the header is parsed by open)
    except FileNotFoundError:
        return "not found"
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        return _reason(err, path)
    return None


def decode_image(path: str | Path, channels: int | None = None,
                 image_size: int | None = None, *, keep_aspect: bool = False) -> torch.Tensor:
    """uint8 (C, H, W): C = `channels` (1 grey, 3 RGB; None keeps the file's grey or RGB),
    resized (antialiased bilinear) to image_size × image_size when given: squeezed to the square,
    or, with `keep_aspect`, the evaluation crop (`resize_and_crop`) as image folders use."""
    array = read_pixels(path)
    x = torch.from_numpy(np.array(array))  # a writable copy: PIL's buffer is read-only
    x = x.unsqueeze(0) if x.dim() == 2 else x.permute(2, 0, 1)  # (H, W[, 3]) → (C, H, W)
    x = x.unsqueeze(0)  # (1, C, H, W)
    if channels is not None:
        x = convert_channels(x, channels)
    if image_size is not None:
        x = resize_and_crop(x, image_size) if keep_aspect else resize_images(x, image_size)
    return x[0].contiguous()


def resize_and_crop(images: torch.Tensor, size: int, crop: float = EVAL_CROP) -> torch.Tensor:
    """uint8 (N, C, H, W) → uint8 (N, C, size, size): the shorter side resized (antialiased
    bilinear) to round(size / crop), keeping the aspect ratio, then the centre size × size."""
    h, w = images.shape[-2:]
    side = max(size, round(size / crop))
    scale = side / min(h, w)
    new_h, new_w = (side, max(side, round(w * scale))) if h <= w else \
        (max(side, round(h * scale)), side)
    if (new_h, new_w) != (h, w):
        images = F.interpolate(images.float(), size=(new_h, new_w), mode="bilinear",
                               align_corners=False, antialias=True)
        images = images.round_().clamp_(0, 255).to(torch.uint8)
    top, left = round((new_h - size) / 2), round((new_w - size) / 2)  # torchvision's center_crop
    return images[..., top:top + size, left:left + size]


def model_image_size(cfg: dict, model_args: dict) -> int:
    """The side an image folder is resized to for a model: its `img_size` keyword where given,
    SMALL_INPUT_SIZE for small_input=true, else the model's default input size."""
    if model_args.get("img_size"):
        return int(model_args["img_size"])
    return SMALL_INPUT_SIZE if model_args.get("small_input") else int(cfg["input_size"][1])


def train_crop_scale(ds) -> tuple[float, float] | None:
    """The area range of the random-resized crops that training on `ds` takes (None: not an
    image folder, whose data sets keep their own recipes)."""
    if getattr(ds, "name", None) != "imagefolder":
        return None
    return RRC_SCALE if len(ds) >= LARGE_FOLDER else RRC_SCALE_SMALL


# --- finding the files ---

def _class_folders(root: Path) -> list[str]:
    return sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))


def _images_of(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*")
                  if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def _scan(root: Path, classes: list[str]) -> tuple[list[Path], list[int]]:
    unknown = sorted(set(_class_folders(root)) - set(classes))
    if unknown:
        raise CnnkitError(f"{root} has class folders {', '.join(unknown)} that the training "
                          f"split lacks")
    files, labels = [], []
    for label, cls in enumerate(classes):
        if (root / cls).is_dir():
            found = _images_of(root / cls)
            files += found
            labels += [label] * len(found)
    return files, labels


def split_files(root: Path, split: str) -> tuple[list[Path], list[int], list[str], list[Path]]:
    """(files of `split`, their labels, class names, files of the training split)."""
    root = Path(root)
    if split not in ("train", "test"):
        raise CnnkitError(f"unknown split '{split}'; choose from test, train")
    if not root.is_dir():
        raise CnnkitError(f"image folder {root} does not exist")
    if (root / "train").is_dir():
        classes = _class_folders(root / "train")
        test_root = next((root / n for n in ("test", "val") if (root / n).is_dir()), None)
        if test_root is None:
            raise CnnkitError(f"{root} has train/ but neither test/ nor val/; add one, or put the "
                              f"class folders directly in {root} for an automatic 80/20 split")
        train_files, train_labels = _scan(root / "train", classes)
        files, labels = (train_files, train_labels) if split == "train" else _scan(test_root,
                                                                                   classes)
    else:
        classes = _class_folders(root)
        all_files, all_labels = _scan(root, classes)
        train_index, test_index = stratified_split(torch.tensor(all_labels, dtype=torch.int64),
                                                   TEST_FRACTION, SPLIT_SEED)
        train_files = [all_files[i] for i in train_index.tolist()]
        index = train_index if split == "train" else test_index
        files = [all_files[i] for i in index.tolist()]
        labels = [all_labels[i] for i in index.tolist()]
    if not train_files:
        raise CnnkitError(f"no images found in {root}: expected ROOT/<class>/*.png|jpg "
                          f"(or ROOT/train/<class>/... and ROOT/test/<class>/...)")
    if len(classes) < 2:  # nothing to tell apart: a classifier would learn a constant
        raise CnnkitError(f"{root} has one class folder ({', '.join(classes)}); a classifier "
                          f"needs at least two: add a folder per class")
    if not files:
        raise CnnkitError(f"the {split} split of {root} has no images; add some (an automatic "
                          f"split holds out {TEST_FRACTION:.0%} of each class, rounded)")
    return files, labels, classes, train_files


# --- the data set ---

class ImageFolderDataset(torch.utils.data.Dataset):
    """An image folder's split, decoded one file per item: (uint8 (C, H, W), label).

    `image_size=None` keeps the native size, which must then be the same for every image.
    mean/std come from up to STATS_SAMPLE evenly spaced training images, so the train and test
    splits share them and computing them stays cheap for a large folder.

    Unreadable files (not an image whatever the name, empty, cut short) are left out, listed in
    `skipped` and in one warning line on stderr (`report=False`: the caller warns), unless
    `strict`, where the first raises a one-line CnnkitError. Headers are checked here (cheap);
    a file cut after a valid header is found when decoded: `load_imagefolder` skips it then,
    and `StreamingLoader` drops it from its batch (`unreadable`).
    """

    def __init__(self, root: str | Path, split: str = "train", *, image_size: int | None = None,
                 channels: int = 3, hflip_ok: bool = True, strict: bool = False,
                 report: bool = True):
        if channels not in (1, 3):
            raise CnnkitError(f"channels must be 1 (grey) or 3 (RGB), got {channels}")
        if image_size is not None and image_size < 1:
            raise CnnkitError(f"image_size must be a positive number of pixels, got {image_size}")
        self.root, self.split = Path(root), split
        self.files, labels, self.classes, self._train_files = split_files(self.root, split)
        self.strict, self.skipped, self._reasons = strict, [], {}
        if not strict:
            # After the split, not before: a bad file never moves good ones between splits.
            problems = [header_problem(p) for p in self.files]
            for path, problem in zip(self.files, problems):
                if problem is not None:
                    self._skip(path, problem)
            labels = [y for y, problem in zip(labels, problems) if problem is None]
            self.files = [p for p, problem in zip(self.files, problems) if problem is None]
            if not self.files:
                raise CnnkitError(f"none of the {len(problems)} images of the {split} split of "
                                  f"{self.root} can be read ({self.skipped[0]}: "
                                  f"{self._reasons[self.skipped[0]]})")
        self.labels = torch.tensor(labels, dtype=torch.int64)
        self.channels, self.image_size, self.hflip_ok = channels, image_size, hflip_ok
        self.name = "imagefolder"
        # Without image_size every image must match the first training image's size.
        self._native_hw = None if image_size else self._header_size(next(
            (p for p in self._train_files if strict or header_problem(p) is None),
            self._train_files[0]))
        self.mean, self.std = self._train_stats()
        if report:
            self.warn_skipped()

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.decode(self.files[i]), int(self.labels[i])

    def decode(self, path: Path) -> torch.Tensor:
        x = decode_image(path, self.channels, self.image_size, keep_aspect=True)
        if self._native_hw is not None and tuple(x.shape[1:]) != self._native_hw:
            raise CnnkitError(f"{path} is {x.shape[2]}×{x.shape[1]} but {self._train_files[0]} "
                              f"is {self._native_hw[1]}×{self._native_hw[0]}; pass image_size "
                              f"(--image-size) to resize them all")
        return x

    @property
    def image_shape(self) -> tuple[int, int, int]:
        hw = self._native_hw or (self.image_size, self.image_size)
        return (self.channels, *hw)

    def subset(self, index: torch.Tensor) -> "ImageFolderDataset":
        """The files at `index` (e.g. a validation split), sharing classes and normalisation."""
        part = copy.copy(self)
        index = torch.as_tensor(index, dtype=torch.int64)
        part.files = [self.files[i] for i in index.tolist()]
        part.labels = self.labels[index]
        return part

    def images_at(self, index: torch.Tensor) -> torch.Tensor:
        """uint8 (len(index), C, H, W), decoded now (as ArrayDataset.images_at reads memory);
        an unreadable file is black (for figures), or, when strict, a CnnkitError."""
        blank = torch.zeros(self.image_shape, dtype=torch.uint8)
        decoded = (self.try_decode(self.files[i], note=False) for i in index.tolist())
        return torch.stack([blank if x is None else x for x in decoded])

    # --- unreadable files ---

    def try_decode(self, path: Path, *, note: bool = True) -> torch.Tensor | None:
        """decode(path), or None for an unreadable file (recorded in `skipped` when `note`);
        when strict, or for any other problem (a size mismatch), the CnnkitError."""
        try:
            return self.decode(path)
        except UnreadableImage as err:
            if self.strict:
                raise
            if note:
                self._skip(path, err.reason)
            return None

    def unreadable(self, index: list[int]) -> list[int]:
        """The items at `index` failed to decode in a DataLoader worker: decode them again here,
        so that a strict run (or any other error) stops with its one-line CnnkitError, not a
        worker's traceback; else warn once per file. Returns the indices truly unreadable."""
        before = len(self.skipped)
        failed = [i for i in index if self.try_decode(self.files[i]) is None]
        if len(self.skipped) > before:
            self.warn_skipped(self.skipped[before:])
        return failed

    def forget(self, index: list[int]) -> None:
        """Leave the items at `index` out from now on (after an evaluation pass found them)."""
        gone = set(index)
        keep = [i for i in range(len(self.files)) if i not in gone]
        self.files = [self.files[i] for i in keep]
        self.labels = self.labels[torch.tensor(keep, dtype=torch.int64)]

    def warn_skipped(self, paths: list[Path] | None = None) -> None:
        """One line on stderr naming the unreadable files skipped (all so far by default)."""
        paths = self.skipped if paths is None else paths
        if not paths:
            return
        names = ", ".join(f"{_relative(p, self.root)} ({self._reasons[p]})" for p in paths)
        print(f"warning: skipped {len(paths)} unreadable image{'s' * (len(paths) != 1)} of the "
              f"{self.split} split of {self.root}: {names}; --strict stops at the first instead",
              file=sys.stderr, flush=True)

    def _skip(self, path: Path, reason: str) -> None:
        if path not in self._reasons:
            self.skipped.append(path)
            self._reasons[path] = reason

    def _train_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        step = math.ceil(len(self._train_files) / STATS_SAMPLE)
        # Unreadable training files are left out of the sample (the train split reports them).
        sample = [self.try_decode(p, note=False) for p in self._train_files[::step]]
        sample = [x for x in sample if x is not None]
        if not sample:
            raise CnnkitError(f"none of the training images of {self.root} can be read")
        return channel_stats(torch.stack(sample))  # (n, C, H, W)

    @staticmethod
    def _header_size(path: Path) -> tuple[int, int]:
        try:
            with Image.open(path) as img:  # reads the header only
                width, height = img.size
        except (OSError, SyntaxError, ValueError) as err:
            raise CnnkitError(f"cannot decode image {path} ({err}); remove or replace the file") \
                from None
        return height, width


def load_imagefolder(root: str | Path, split: str = "train", *, image_size: int | None = None,
                     channels: int = 3, hflip_ok: bool = True, quiet: bool = True,
                     strict: bool = False) -> ArrayDataset:
    """Decode every image of an image folder's split, once, into an ArrayDataset. Unreadable
    files are skipped with one warning line and listed in the result's `skipped` (a list of
    paths), unless `strict` (see ImageFolderDataset)."""
    folder = ImageFolderDataset(root, split, image_size=image_size, channels=channels,
                                hflip_ok=hflip_ok, strict=strict, report=False)
    images = torch.empty(len(folder), *folder.image_shape, dtype=torch.uint8)  # (N, C, H, W)
    kept = torch.ones(len(folder), dtype=torch.bool)
    for i, path in enumerate(tqdm(folder.files, desc=f"decoding {split}", unit="img",
                                  disable=quiet, leave=False)):
        x = folder.try_decode(path)
        if x is None:
            kept[i] = False
        else:
            images[i] = x
    folder.warn_skipped()
    if not kept.all():
        images = images[kept]  # a copy, only when something was skipped
    ds = ArrayDataset(images, folder.labels[kept], folder.classes, folder.name, hflip_ok,
                      folder.mean, folder.std)
    ds.skipped = folder.skipped  # not a field: subsets and copies leave it behind
    return ds


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)
