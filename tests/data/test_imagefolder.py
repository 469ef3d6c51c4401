"""Image folders of real CIFAR JPEGs, plus files in every common PIL mode, decoded once."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from cnnkit.data import DEFAULT_DATA_DIR, load_dataset
from cnnkit.data.array_dataset import channel_stats
from cnnkit.data.imagefolder import ImageFolderDataset, decode_image
from cnnkit.utils import CnnkitError
from tests.data.conftest import unzip_cifar_test

CLASSES = ["bird", "cat", "ship"]


@pytest.fixture(scope="module")
def flat_folder(tmp_path_factory):
    """ROOT/<class>/*.jpg, 11 real images per class: the 80/20 split gives 9/2 (11 × 0.2 = 2.2)."""
    root = tmp_path_factory.mktemp("flat")
    unzip_cifar_test(root, 11, CLASSES)
    return root


def _pil_rgb(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).transpose(2, 0, 1)  # (3, H, W)


def test_automatic_stratified_split(flat_folder):
    train = load_dataset("imagefolder", "train", data_dir=flat_folder)
    test = load_dataset("imagefolder", "test", data_dir=flat_folder)
    assert train.classes == CLASSES and train.class_counts() == [9, 9, 9]
    assert test.class_counts() == [2, 2, 2] and train.images.shape[1:] == (3, 32, 32)
    # Every file lands in exactly one split, pixel-identical to PIL's decoding of it.
    decoded = {p.name + p.parent.name: _pil_rgb(p) for p in flat_folder.rglob("*.jpg")}
    found = [x.numpy() for x in torch.cat([train.images, test.images])]
    for pixels in decoded.values():
        assert sum(np.array_equal(pixels, x) for x in found) == 1
    # Fixed seed: loading again gives the same split; statistics are the training split's.
    assert load_dataset("imagefolder", "test", data_dir=flat_folder).images.equal(test.images)
    assert train.mean == test.mean == channel_stats(train.images)[0] and train.hflip_ok


def test_explicit_train_and_val_folders(flat_folder, tmp_path):
    for cls in CLASSES:
        files = sorted((flat_folder / cls).iterdir())
        for split, chosen in (("train", files[:7]), ("val", files[7:])):
            (tmp_path / split / cls).mkdir(parents=True)
            for f in chosen:
                shutil.copy(f, tmp_path / split / cls / f.name)
    test = load_dataset("imagefolder", "test", data_dir=tmp_path, channels=1, image_size=16)
    assert test.class_counts() == [4, 4, 4] and test.images.shape == (12, 1, 16, 16)
    first = sorted((tmp_path / "val" / "bird").iterdir())[0]
    # The evaluation crop: shorter side to round(16 / 0.875) = 18, aspect kept, centre 16×16.
    grey = Image.open(first).convert("L")
    scale = 18 / min(grey.size)
    wide, high = max(18, round(grey.size[0] * scale)), max(18, round(grey.size[1] * scale))
    left, top = (wide - 16) // 2, (high - 16) // 2
    expected = np.asarray(grey.resize((wide, high), Image.BILINEAR))[top:top + 16, left:left + 16]
    assert np.abs(test.images[0, 0].numpy().astype(int) - expected).max() <= 2
    (tmp_path / "val" / "frog").mkdir()
    with pytest.raises(CnnkitError, match="class folders frog that the training split lacks"):
        load_dataset("imagefolder", "test", data_dir=tmp_path)


def _mode_images(folder):
    """One image per PIL mode with a known RGB value of pixel (0, 0) after decoding."""
    folder.mkdir(parents=True)
    grey = np.full((6, 8), 77, np.uint8)
    cases = {
        "l.png": (Image.fromarray(grey, "L"), (77, 77, 77)),
        "rgb.jpg": (Image.new("RGB", (8, 6), (0, 255, 0)), None),  # lossy: checked loosely
        "rgba.png": (Image.new("RGBA", (8, 6), (10, 20, 30, 0)), (10, 20, 30)),
        "la.png": (Image.new("LA", (8, 6), (200, 5)), (200, 200, 200)),
        "one.png": (Image.new("1", (8, 6), 1), (255, 255, 255)),
        "i16.png": (Image.fromarray(np.full((6, 8), 60000, np.uint16)), (233, 233, 233)),
    }
    palette = Image.new("P", (8, 6), 1)
    palette.putpalette([0, 0, 0, 90, 60, 30] + [0] * 762)
    palette.info["transparency"] = 0
    cases["p.png"] = (palette, (90, 60, 30))
    for name, (img, _) in cases.items():
        img.save(folder / name)
    return {name: rgb for name, (_, rgb) in cases.items()}


def test_every_pil_mode_decodes(tmp_path):
    expected = _mode_images(tmp_path / "modes")
    assert Image.open(tmp_path / "modes" / "i16.png").mode.startswith("I")  # really 16-bit
    for name, rgb in expected.items():
        x = decode_image(tmp_path / "modes" / name, 3, None)
        assert x.shape == (3, 6, 8) and x.dtype == torch.uint8
        if rgb is None:
            assert abs(int(x[1, 0, 0]) - 255) <= 3 and int(x[0, 0, 0]) <= 3
        else:
            assert tuple(x[:, 0, 0].tolist()) == rgb, name  # 60000/257 → 233 (/256: 234)
        grey = decode_image(tmp_path / "modes" / name, 1, 4)
        assert grey.shape == (1, 4, 4)
        native = decode_image(str(tmp_path / "modes" / name))  # grey stays grey, colour RGB
        assert native.shape[0] == (1 if name in ("l.png", "la.png", "one.png", "i16.png") else 3)


def test_sizes_must_agree_unless_resized(flat_folder, tmp_path):
    shutil.copytree(flat_folder, tmp_path / "mixed")
    Image.new("RGB", (40, 30), (1, 2, 3)).save(tmp_path / "mixed" / "cat" / "zz_big.png")
    with pytest.raises(CnnkitError, match="zz_big.png is 40×30 but .* is 32×32; pass image_size"):
        load_dataset("imagefolder", "train", data_dir=tmp_path / "mixed")
    ds = load_dataset("imagefolder", "train", data_dir=tmp_path / "mixed", image_size=24)
    assert ds.images.shape == (28, 3, 24, 24)  # 11 + 12 + 11 files, 80%: 9 + 10 + 9


def test_bad_folders_and_files(flat_folder, tmp_path):
    with pytest.raises(CnnkitError, match="needs data_dir"):
        load_dataset("imagefolder", "train", data_dir=DEFAULT_DATA_DIR)
    with pytest.raises(CnnkitError, match="does not exist"):
        load_dataset("imagefolder", "train", data_dir=tmp_path / "nowhere")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(CnnkitError, match="no images found"):
        load_dataset("imagefolder", "train", data_dir=tmp_path / "empty")
    shutil.copytree(flat_folder, tmp_path / "broken")
    (tmp_path / "broken" / "cat" / "0003.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    with pytest.raises(CnnkitError, match=r"cannot decode image .*cat/0003.jpg"):
        load_dataset("imagefolder", "train", data_dir=tmp_path / "broken", image_size=32,
                     strict=True)  # without strict it is skipped: test_imagefolder_bad_files.py
    with pytest.raises(CnnkitError, match="image .*missing.png not found"):
        decode_image(tmp_path / "missing.png")
    (tmp_path / "only_train" / "train" / "a").mkdir(parents=True)
    with pytest.raises(CnnkitError, match="neither test/ nor val/"):
        ImageFolderDataset(tmp_path / "only_train", "train")
