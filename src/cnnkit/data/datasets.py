"""The data sets cnnkit knows, and `load_dataset`, which turns any of them into an `ArrayDataset`.

Every data set is decoded once into a uint8 tensor; files are downloaded into
`data_dir/<name>/` from the official location (or a mirror) and verified by MD5 on every load.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cnnkit.data.array_dataset import ArrayDataset, channel_stats, convert_dataset, resize_images
from cnnkit.data.download import fetch, require_file, resolve_url
from cnnkit.data.formats import read_cifar10, read_idx, read_idx_pair
from cnnkit.data.imagefolder import load_imagefolder
from cnnkit.data.mnist_seq import DIGIT_SIZE, build_mnist_seq
from cnnkit.utils import CnnkitError, suggest

DEFAULT_DATA_DIR = Path("~/.cache/cnnkit").expanduser()
SPLITS = ("train", "test")


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a data set, for `cnnkit datasets` and for defaults."""

    name: str
    description: str
    num_classes: int  # 0: decided by the folder (imagefolder)
    channels: int
    image_size: int  # native side in pixels; 0: varies
    train_size: int
    test_size: int
    hflip_ok: bool
    source: str  # official URL, or where the data comes from


_INFOS = {info.name: info for info in [
    DatasetInfo("cifar10", "32×32 colour photos, 10 classes (Krizhevsky 2009, "
                "'Learning Multiple Layers of Features from Tiny Images')",
                10, 3, 32, 50_000, 10_000, True,
                "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"),
    DatasetInfo("digits", "8×8 handwritten digits (UCI) upsampled to 28×28; fixed split: "
                "train_test_split(test_size=0.2, stratify=y, random_state=0)", 10, 1, 28, 1437,
                360, False, "bundled with scikit-learn"),
    # A mirrored shirt or shoe is still a shirt or shoe: Zhong et al. 2017 (Random Erasing,
    # arXiv:1708.04896) train Fashion-MNIST with random flips.
    DatasetInfo("fashion-mnist", "28×28 grey photos of Zalando articles, 10 classes (Xiao et al. "
                "2017, arXiv:1708.07747)", 10, 1, 28, 60_000, 10_000, True,
                "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"),
    DatasetInfo("imagefolder", "your images: ROOT/<class>/*.png|jpg, split by ROOT/train + "
                "ROOT/test (or val) folders, else 80/20 stratified, seed 0", 0, 3, 0, 0, 0, True,
                "a local folder (data_dir=ROOT)"),
    DatasetInfo("kmnist", "28×28 cursive Japanese hiragana, 10 classes (Clanuwat et al. 2018, "
                "arXiv:1812.01718)", 10, 1, 28, 60_000, 10_000, False,
                "http://codh.rois.ac.jp/kmnist/dataset/kmnist/"),
    DatasetInfo("mnist", "28×28 handwritten digits (LeCun et al. 1998)", 10, 1, 28, 60_000,
                10_000, False, "https://ossci-datasets.s3.amazonaws.com/mnist/"),
    DatasetInfo("mnist-seq", "3–5 MNIST digits side by side on a 28×140 canvas, read as a "
                "sequence: labels (N, 5), the digits then 10 = end; built on the fly (seeded per "
                "split) from mnist's files", 11, 1, DIGIT_SIZE, 60_000, 10_000, False,
                "mnist's four files in data_dir/mnist (fetched as for mnist when missing)"),
]}

# The four IDX files of each MNIST-like set with their published MD5s (the ones torchvision's
# datasets/mnist.py checks; MNIST's also in ../shared/datasets/mnist/MD5SUMS).
_IDX_MD5 = {
    "mnist": {"train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
              "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
              "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
              "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"},
    "fashion-mnist": {"train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                      "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
                      "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
                      "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"},
    "kmnist": {"train-images-idx3-ubyte.gz": "bdb82020997e1d708af4cf47b453dcf7",
               "train-labels-idx1-ubyte.gz": "e144d726b3acfaa3e44228e80efcd344",
               "t10k-images-idx3-ubyte.gz": "5c965bf0a639b31b8f53240b1b52f4d7",
               "t10k-labels-idx1-ubyte.gz": "7320c461ea6c1c855c0b718fb2a4b134"},
}
_CIFAR10_FILE = ("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a")

_CLASSES = {
    "mnist": [str(d) for d in range(10)],
    "digits": [str(d) for d in range(10)],
    "fashion-mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                      "Sneaker", "Bag", "Ankle boot"],
    # Romanised readings of the ten hiragana (kmnist_classmap.csv of the official release).
    "kmnist": ["o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"],
}

DIGITS_SIZE, DIGITS_TEST_FRACTION, DIGITS_SEED = 28, 0.2, 0
# channel_stats() of the 1437 training images of that split (tests/data recomputes them).
DIGITS_MEAN, DIGITS_STD = 0.3054, 0.3246

# Per-channel training-set mean/std on the 0..1 scale.
#   mnist: the classic values, re-checked against ../shared/datasets/mnist in tests/data.
#   fashion-mnist: the published training-set values (0.2860, 0.3530).
#   cifar10: computed over the 50,000 official training images (as in KellerJordan/airbench).
#   kmnist: None = computed from its training file at load time (published values disagree).
_STATS = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "digits": ((DIGITS_MEAN,), (DIGITS_STD,)),
    "kmnist": None,
}


def list_datasets() -> list[str]:
    return sorted(_INFOS)


def get_dataset_info(name: str) -> DatasetInfo:
    if name not in _INFOS:
        raise suggest(name, _INFOS, "data set")
    return _INFOS[name]


def load_dataset(name: str, split: str = "train", *, data_dir: str | Path = DEFAULT_DATA_DIR,
                 mirror: str | None = None, download: bool = True, image_size: int | None = None,
                 channels: int | None = None, quiet: bool = False) -> ArrayDataset:
    """Decode data set `name`'s `split` ("train" or "test") into memory.

    Downloads missing files into `data_dir/<name>/` (from `mirror` or $CNNKIT_MIRROR where set)
    unless `download=False`. `image_size` / `channels` convert the images (antialiased bilinear
    resize; grey ↔ RGB) when they differ from the native ones. For "imagefolder", `data_dir` is
    the image folder itself and `channels` defaults to 3.
    """
    info = get_dataset_info(name)
    if split not in SPLITS:
        raise suggest(split, SPLITS, "split")
    data_dir = Path(data_dir).expanduser()
    if name == "imagefolder":
        if data_dir == DEFAULT_DATA_DIR:
            raise CnnkitError("imagefolder needs data_dir (--data-dir) set to your image folder: "
                              "ROOT/<class>/*.png|jpg, or ROOT/train and ROOT/test")
        return load_imagefolder(data_dir, split, image_size=image_size, channels=channels or 3,
                                hflip_ok=info.hflip_ok, quiet=quiet)
    fetch_options = dict(data_dir=data_dir, mirror=mirror, download=download, quiet=quiet)
    if name == "mnist-seq":  # mnist's own verified files, same folder: nothing new to download
        # A square resize would squash the sequence; 28 (the canvas height, what `cnnkit eval`
        # passes from a checkpoint's image shape) means "native".
        if image_size not in (None, DIGIT_SIZE):
            raise CnnkitError(f"mnist-seq images are 28×140 and cannot be resized to "
                              f"{image_size}×{image_size}; leave --image-size unset")
        digits, digit_labels = read_idx_pair(*_obtain_idx("mnist", split, **fetch_options))
        return convert_dataset(build_mnist_seq(digits, digit_labels, split), None, channels)
    if name == "digits":
        images, labels = _digits_split(split)
        classes = _CLASSES[name]
    elif name == "cifar10":
        filename, md5 = _CIFAR10_FILE
        path = _obtain(name, filename, md5, official_base=info.source.rsplit("/", 1)[0],
                       **fetch_options)
        images, labels, classes = read_cifar10(path, split)
    else:
        images, labels = read_idx_pair(*_obtain_idx(name, split, **fetch_options))
        classes = _CLASSES[name]
    if _STATS[name] is not None:
        mean, std = _STATS[name]
    else:  # the training set's statistics, also for the test split
        images_path, _ = _obtain_idx(name, "train", **fetch_options)
        mean, std = _idx_stats(str(images_path))
    ds = ArrayDataset(images, labels, classes, name, info.hflip_ok, mean, std)
    return convert_dataset(ds, image_size, channels)


# --- the sources ---

def _obtain(name: str, filename: str, md5: str, *, official_base: str, data_dir: Path,
            mirror: str | None, download: bool, quiet: bool) -> Path:
    """The verified path of `filename` in `data_dir/name/`, downloaded first where allowed."""
    url = resolve_url(official_base, filename, mirror)
    dest = data_dir / name / filename
    return fetch(url, dest, md5, quiet=quiet) if download else require_file(dest, md5, url)


def _obtain_idx(name: str, split: str, **fetch_options) -> tuple[Path, Path]:
    """The (images, labels) IDX files of `split`."""
    prefix = "train" if split == "train" else "t10k"
    names = [f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz"]
    paths = [_obtain(name, n, _IDX_MD5[name][n], official_base=_INFOS[name].source,
                     **fetch_options) for n in names]
    return paths[0], paths[1]


@functools.lru_cache(maxsize=4)
def _idx_stats(images_path: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    # Keyed by path: the file's MD5 has just been verified, so its content is fixed.
    images = torch.from_numpy(read_idx(Path(images_path), ndim=3)).unsqueeze(1)  # (N, 1, H, W)
    return channel_stats(images)


def digits_split_indices() -> tuple[torch.Tensor, torch.Tensor]:
    """(train, test) indices into load_digits(), each sorted.

    The usual scikit-learn recipe, train_test_split(test_size=0.2, stratify=y, random_state=0),
    so that results on the test set compare with anyone else's who used it.
    """
    from sklearn.model_selection import train_test_split  # noqa: PLC0415 (slow import)

    labels = _digits_all()[1].numpy()
    train, test = train_test_split(np.arange(len(labels)), test_size=DIGITS_TEST_FRACTION,
                                   stratify=labels, random_state=DIGITS_SEED)
    return torch.from_numpy(np.sort(train)), torch.from_numpy(np.sort(test))


def _digits_split(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's digits as uint8 (N, 1, 28, 28), values 0..16 scaled to 0..255."""
    images, labels = _digits_all()
    train_index, test_index = digits_split_indices()
    index = train_index if split == "train" else test_index
    return images[index], labels[index]


@functools.lru_cache(maxsize=1)
def _digits_all() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits  # noqa: PLC0415 (importing scikit-learn takes ~1 s)

    bunch = load_digits()
    values = torch.from_numpy(bunch.images).float().unsqueeze(1)  # (1797, 1, 8, 8), 0..16
    images = (values * (255 / 16)).round().to(torch.uint8)
    return resize_images(images, DIGITS_SIZE), torch.from_numpy(bunch.target).long()
