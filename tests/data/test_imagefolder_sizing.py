"""Image-folder sizing: torchvision's evaluation crop (shorter side → size/0.875, centre crop),
random-resized crops for training (checked against F.interpolate on each crop as the oracle),
the small-input default size, the run header, a one-class folder, a batch larger than the data."""
import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from cnnkit.data import load_dataset
from cnnkit.data.augment import BatchAugment, resized_crop_images, sample_crop_boxes
from cnnkit.data.imagefolder import (EVAL_CROP, RRC_SCALE_SMALL, SMALL_INPUT_SIZE,
                                     split_files, train_crop_scale)
from cnnkit.train import TrainConfig, train
from cnnkit.train.classify import load_data, make_loader
from tests.cli._run import assert_one_line_error, cnnkit


def _circles(root, per_class=4, size=(60, 40)):
    """Two classes of wide (60×40) photos: a centred disk, bright or dark, on grey."""
    w, h = size
    for cls, fill in (("bright", 230), ("dark", 20)):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            img = Image.new("L", (w, h), 128)
            r = 12 + i % 3
            ImageDraw.Draw(img).ellipse((w / 2 - r, h / 2 - r, w / 2 + r, h / 2 + r), fill=fill)
            img.convert("RGB").save(root / cls / f"{i}.png")
    return root


def test_evaluation_crop_keeps_the_aspect_ratio(tmp_path):
    root = _circles(tmp_path / "f")
    test = load_dataset("imagefolder", "test", data_dir=root, channels=1, image_size=16)
    assert test.images.shape[1:] == (1, 16, 16)
    # Oracle: PIL, as torchvision's Resize(round(16/0.875)) + CenterCrop(16) on the file.
    side = round(16 / EVAL_CROP)  # 18 (torchvision's 256 for 224)
    test_file = split_files(root, "test")[0][0]
    img = Image.open(test_file).convert("L")
    wide = img.resize((round(60 * side / 40), side), Image.BILINEAR)  # 27×18: aspect kept
    left, top = round((wide.width - 16) / 2), round((wide.height - 16) / 2)
    expected = np.asarray(wide.crop((left, top, left + 16, top + 16))).astype(int)
    assert np.abs(test.images[0, 0].numpy().astype(int) - expected).max() <= 2, test_file
    # A disk stays a disk: as wide as it is tall (a 60×40 → 16×16 squeeze made it 1.5× taller).
    ink = test.images[:, 0].float().sub(128).abs() > 50  # (N, 16, 16)
    for mask in ink:
        rows, cols = mask.any(1).sum().item(), mask.any(0).sum().item()
        assert abs(rows - cols) <= 1, (rows, cols)


def test_small_input_models_get_a_small_default_size(tmp_path):
    root = _circles(tmp_path / "f")
    common = dict(dataset="imagefolder", data_dir=str(root), val_fraction=0.0)
    small, _, test, kwargs = load_data(TrainConfig(model="resnet18",
                                                   model_args={"small_input": True}, **common))
    assert small.image_shape == test.image_shape == (3, SMALL_INPUT_SIZE, SMALL_INPUT_SIZE)
    assert kwargs["small_input"] is True
    plain, _, _, _ = load_data(TrainConfig(model="resnet18", **common))
    assert plain.image_shape == (3, 224, 224)  # the model's own input size otherwise


def test_resized_crop_equals_interpolate_of_each_crop():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 20, 20, generator=g, dtype=torch.float32) * 255
    top, left, height, width = sample_crop_boxes(6, 20, 20, (0.1, 1.0), g)
    out = resized_crop_images(x, top, left, height, width)
    for b in range(6):
        crop = x[b:b + 1, :, top[b]:top[b] + height[b], left[b]:left[b] + width[b]]
        oracle = F.interpolate(crop, size=(20, 20), mode="bilinear", align_corners=False)
        torch.testing.assert_close(out[b:b + 1], oracle, atol=1e-3, rtol=0)
    as_uint8 = resized_crop_images(x.round().to(torch.uint8), top, left, height, width)
    assert as_uint8.dtype == torch.uint8 and as_uint8.shape == x.shape


def test_crop_boxes_follow_torchvision_ranges():
    n, side, scale = 4000, 64, RRC_SCALE_SMALL
    g = torch.Generator().manual_seed(1)
    top, left, height, width = sample_crop_boxes(n, side, side, scale, g)
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + height <= side).all() and (left + width <= side).all()
    area, ratio = (height * width).float() / side ** 2, width.float() / height.float()
    slack = 2 / side  # the box sides are rounded to whole pixels
    assert area.min() >= scale[0] - 2 * slack and area.max() <= 1
    assert ratio.min() >= 3 / 4 - 3 * slack and ratio.max() <= 4 / 3 + 3 * slack
    # Same distribution as torchvision's RandomResizedCrop.get_params, written out per sample
    # (its rejection of boxes that do not fit makes large areas rarer than uniform).
    rng = random.Random(0)
    ref = [_torchvision_get_params(side, side, scale, (3 / 4, 4 / 3), rng) for _ in range(n)]
    ref_area = np.mean([h * w / side ** 2 for _, _, h, w in ref])
    ref_ratio = np.mean([w / h for _, _, h, w in ref])
    assert abs(area.mean().item() - ref_area) < 0.015, (area.mean(), ref_area)
    assert abs(ratio.mean().item() - ref_ratio) < 0.015, (ratio.mean(), ref_ratio)
    again = sample_crop_boxes(n, side, side, scale, torch.Generator().manual_seed(1))
    assert all(a.equal(b) for a, b in zip((top, left, height, width), again))


def _torchvision_get_params(height, width, scale, ratio, rng):
    """torchvision.transforms.RandomResizedCrop.get_params, with Python's random."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*scale)
        aspect_ratio = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    return (0, 0, height, width)  # a square image: the fallback is the whole image


def test_training_on_a_folder_uses_random_resized_crops(tmp_path):
    root = _circles(tmp_path / "f")
    config = TrainConfig(model="lenet", dataset="imagefolder", data_dir=str(root),
                         val_fraction=0.0).resolve()
    train_set, _, _, _ = load_data(config)
    loader = make_loader(train_set, 4, config, train=True)
    assert loader.augment.resized_crop == train_crop_scale(train_set) == RRC_SCALE_SMALL
    digits = TrainConfig(dataset="digits").resolve()
    assert train_crop_scale(load_data(digits)[0]) is None  # built-in sets keep their recipes
    aug = BatchAugment(resized_crop=(0.25, 1.0))
    x = train_set.images[:4]
    assert not aug(x, torch.Generator().manual_seed(0)).equal(x)


def test_run_header_batch_clip_and_one_class_refusal(tmp_path):
    root = _circles(tmp_path / "f")
    lines = []
    result = train(TrainConfig(model="lenet", dataset="imagefolder", data_dir=str(root),
                               epochs=1, batch_size=500, val_fraction=0.0, quiet=True,
                               threads=1, out_dir=str(tmp_path), name="run",
                               tensorboard=False), log=lines.append)
    n_train = 6  # 80 % of 4 per class, rounded, for 2 classes
    assert f"note: --batch-size 500 is more than the {n_train} training images; using " \
           f"batches of {n_train}" in lines
    header = next(line for line in lines if line.startswith("input "))
    spec = torch.load(result.run_dir / "last.pt", weights_only=True)["spec"]
    mean = ", ".join(f"{v:.3f}" for v in spec["mean"])
    assert header.startswith("input 1×28×28 (shorter side → 32, centre 28×28; training: "
                             "random-resized crops, area 0.25–1)"), header
    assert f"mean ({mean})" in header
    (tmp_path / "one" / "cats").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "one" / "cats" / "a.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "one" / "cats" / "b.png")
    proc = cnnkit("train", "--dataset", "imagefolder", "--data-dir", tmp_path / "one",
                  "--out-dir", tmp_path, "--quiet")
    assert_one_line_error(proc, str(tmp_path / "one"), "one class folder (cats)",
                          "at least two")
    with pytest.raises(Exception, match="one class folder"):
        load_dataset("imagefolder", "train", data_dir=tmp_path / "one")
