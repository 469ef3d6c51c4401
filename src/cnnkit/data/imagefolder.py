"""Image folders: ROOT/<class>/<image> files of any size and PIL mode, as a data set.

Layout: if ROOT/train exists, it and ROOT/test (or ROOT/val) are the splits; otherwise every image
under ROOT is split 80/20, stratified by class, with seed 0, so the test set is always the same.
`ImageFolderDataset` decodes one file per item (for `StreamingLoader`); `load_imagefolder` decodes
them all once into an `ArrayDataset`. Both use `decode_image`, so both give identical tensors.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from cnnkit.data.array_dataset import (ArrayDataset, channel_stats, convert_channels,
                                       resize_images, stratified_split)
from cnnkit.utils import CnnkitError

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
TEST_FRACTION, SPLIT_SEED = 0.2, 0
STATS_SAMPLE = 2000  # training images (evenly spaced) that the normalisation statistics use
_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N", "I"}  # PNG's 16-bit grey opens as one of these


# --- decoding ---

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
        raise CnnkitError(f"image {path} not found") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise CnnkitError(f"cannot decode image {path} ({err}); remove or replace the file") \
            from None


def decode_image(path: str | Path, channels: int | None = None,
                 image_size: int | None = None) -> torch.Tensor:
    """uint8 (C, H, W): C = `channels` (1 grey, 3 RGB; None keeps the file's grey or RGB),
    resized (antialiased bilinear) to image_size × image_size when given."""
    array = read_pixels(path)
    x = torch.from_numpy(np.array(array))  # a writable copy: PIL's buffer is read-only
    x = x.unsqueeze(0) if x.dim() == 2 else x.permute(2, 0, 1)  # (H, W[, 3]) → (C, H, W)
    x = x.unsqueeze(0)  # (1, C, H, W)
    if channels is not None:
        x = convert_channels(x, channels)
    if image_size is not None:
        x = resize_images(x, image_size)
    return x[0].contiguous()


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
    """

    def __init__(self, root: str | Path, split: str = "train", *, image_size: int | None = None,
                 channels: int = 3, hflip_ok: bool = True):
        if channels not in (1, 3):
            raise CnnkitError(f"channels must be 1 (grey) or 3 (RGB), got {channels}")
        if image_size is not None and image_size < 1:
            raise CnnkitError(f"image_size must be a positive number of pixels, got {image_size}")
        self.root, self.split = Path(root), split
        self.files, labels, self.classes, self._train_files = split_files(self.root, split)
        self.labels = torch.tensor(labels, dtype=torch.int64)
        self.channels, self.image_size, self.hflip_ok = channels, image_size, hflip_ok
        self.name = "imagefolder"
        # Without image_size every image must match the first training image's size.
        self._native_hw = None if image_size else self._header_size(self._train_files[0])
        self.mean, self.std = self._train_stats()

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.decode(self.files[i]), int(self.labels[i])

    def decode(self, path: Path) -> torch.Tensor:
        x = decode_image(path, self.channels, self.image_size)
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
        """uint8 (len(index), C, H, W), decoded now (as ArrayDataset.images_at reads memory)."""
        return torch.stack([self.decode(self.files[i]) for i in index.tolist()])

    def _train_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        step = math.ceil(len(self._train_files) / STATS_SAMPLE)
        sample = torch.stack([self.decode(p) for p in self._train_files[::step]])  # (n, C, H, W)
        return channel_stats(sample)

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
                     channels: int = 3, hflip_ok: bool = True, quiet: bool = True) -> ArrayDataset:
    """Decode every image of an image folder's split, once, into an ArrayDataset."""
    folder = ImageFolderDataset(root, split, image_size=image_size, channels=channels,
                                hflip_ok=hflip_ok)
    images = torch.empty(len(folder), *folder.image_shape, dtype=torch.uint8)  # (N, C, H, W)
    for i, path in enumerate(tqdm(folder.files, desc=f"decoding {split}", unit="img",
                                  disable=quiet, leave=False)):
        images[i] = folder.decode(path)
    return ArrayDataset(images, folder.labels, folder.classes, folder.name, hflip_ok,
                        folder.mean, folder.std)
