"""Unpaired domain folders (ROOT/trainA, trainB, testA, testB), the registered horse2zebra, and the
batch loader with its crop and flip ops, on real files."""
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from cnnkit.data import get_dataset_info, load_dataset
from cnnkit.data.array_dataset import resize_images
from cnnkit.data.unpaired import (UnpairedLoader, crop_images, domain_files, load_unpaired,
                                  random_crop_flip, random_rescale, to_unit_range)
from cnnkit.utils import CnnkitError
from tests.conftest import DATASETS

HORSE2ZEBRA = DATASETS / "horse2zebra-128"
COUNTS = {"trainA": 1067, "trainB": 1334, "testA": 120, "testB": 140}  # its README


def make_unpaired(root, n_train=12, n_test=4):
    """ROOT/{train,test}{A,B} holding the first real horse2zebra photos of each folder."""
    for folder in COUNTS:
        (root / folder).mkdir(parents=True)
        for path in sorted((HORSE2ZEBRA / folder).iterdir())[:n_train if "train" in folder
                                                             else n_test]:
            shutil.copy(path, root / folder / path.name)
    return root


def _write(path, size=(8, 8), color=(0, 0, 0)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def test_loads_both_domains_of_a_folder(tmp_path):
    root = make_unpaired(tmp_path / "data", n_train=5, n_test=3)
    train = load_unpaired(root, "train")
    assert train.a.shape == (5, 3, 128, 128) and train.b.shape == (5, 3, 128, 128)
    assert train.a.dtype == torch.uint8
    assert train.files_a == sorted(p.name for p in (root / "trainA").iterdir())
    first = torch.from_numpy(np.array(Image.open(root / "trainA" / train.files_a[0])))
    assert torch.equal(train.a[0], first.permute(2, 0, 1))  # the file's own pixels
    small = load_unpaired(root, "test", load_size=32, limit=2)
    assert small.a.shape == (2, 3, 32, 32) and small.b.shape == (2, 3, 32, 32)


def test_bad_folders_are_one_line_errors(tmp_path):
    root = tmp_path / "data"
    for folder in COUNTS:
        _write(root / folder / "x.png")
    shutil.rmtree(root / "trainB")
    with pytest.raises(CnnkitError, match=r"trainB is missing: an unpaired data set needs"):
        load_unpaired(root)
    (root / "trainB").mkdir()
    with pytest.raises(CnnkitError, match=r"trainB holds no images"):
        load_unpaired(root)
    _write(root / "trainB" / "y.png", size=(8, 10))
    (root / "trainB" / "notes.txt").write_text("not an image")
    with pytest.raises(CnnkitError, match=r"notes.txt is not an image file"):
        load_unpaired(root)
    (root / "trainB" / "notes.txt").unlink()
    with pytest.raises(CnnkitError, match=r"y.png is 10×8 but .*x.png is 8×8: the images must "
                                          r"share one size"):
        load_unpaired(root)
    assert load_unpaired(root, load_size=8).b.shape == (1, 3, 8, 8)  # a resize makes them agree
    (root / "trainB" / "z.png").write_bytes(b"not a png")
    with pytest.raises(CnnkitError, match=r"cannot decode image .*z.png"):
        load_unpaired(root, load_size=8)
    (root / "trainA" / ".DS_Store").write_bytes(b"\0")  # hidden files are not images to read
    assert [p.name for p in domain_files(root, "train", "A")] == ["x.png"]


def test_crop_is_the_slice_of_each_image():
    x = torch.arange(2 * 3 * 7 * 9, dtype=torch.int64).view(2, 3, 7, 9)
    top, left = torch.tensor([0, 3]), torch.tensor([4, 1])
    out = crop_images(x, top, left, 4)
    assert torch.equal(out[0], x[0, :, 0:4, 4:8]) and torch.equal(out[1], x[1, :, 3:7, 1:5])


def test_random_crop_and_flip_draw_from_the_generator():
    x = torch.randint(0, 256, (64, 3, 10, 10), dtype=torch.uint8)
    a = random_crop_flip(x, 6, torch.Generator().manual_seed(1))
    b = random_crop_flip(x, 6, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == (64, 3, 6, 6)
    # Each output is some 6×6 window of its image, mirrored or not; both kinds occur.
    flipped = 0
    for img, out in zip(x, a):
        windows = [img[:, i:i + 6, j:j + 6] for i in range(5) for j in range(5)]
        plain = any(torch.equal(out, w) for w in windows)
        mirrored = any(torch.equal(out.flip(-1), w) for w in windows)
        assert plain or mirrored
        flipped += mirrored and not plain
    assert 16 < flipped < 48  # p = 1/2 over 64 images
    assert torch.equal(to_unit_range(torch.tensor([0, 255], dtype=torch.uint8)),
                       torch.tensor([-1.0, 1.0]))


def test_loader_epochs_cover_the_larger_domain_once(tmp_path):
    root = tmp_path / "data"
    for i in range(5):
        _write(root / "trainA" / f"a{i}.png", color=(i, 0, 0))
    for i in range(8):
        _write(root / "trainB" / f"b{i}.png", color=(0, i, 0))
    ds = load_unpaired(root)
    loader = UnpairedLoader(ds, 2, crop_size=8, hflip=False, seed=3)
    assert len(loader) == 4  # 8 // 2
    loader.set_epoch(0)
    batches = list(loader)
    again = list(loader)
    assert all(torch.equal(x, y) for p, q in zip(batches, again) for x, y in zip(p, q))
    seen_b = sorted(int(b[k, 1, 0, 0].add(1).mul(127.5).round()) for _, b, _ in batches
                    for k in range(2))
    assert seen_b == list(range(8))  # every B image once
    seen_a = [int(a[k, 0, 0, 0].add(1).mul(127.5).round()) for a, *_ in batches for k in range(2)]
    assert set(seen_a) == set(range(5)) and max(map(seen_a.count, range(5))) == 2  # cycled
    loader.set_epoch(1)
    assert not all(torch.equal(x[0], y[0]) for x, y in zip(batches, loader))
    with pytest.raises(CnnkitError, match="--crop-size 9 is larger than the 8×8 images"):
        UnpairedLoader(ds, 2, crop_size=9)


def test_random_rescale_draws_every_side_in_range_and_resizes_the_whole_batch():
    ds = load_unpaired(HORSE2ZEBRA, limit=2, load_size=24)
    generator = torch.Generator().manual_seed(0)
    sides = {random_rescale(ds.a, 16, generator).shape[-1] for _ in range(200)}
    assert sides == set(range(16, 25))
    assert torch.equal(random_rescale(ds.a, 24, generator), ds.a)  # own side: unchanged
    # --min-load-size equal to the crop: some steps crop the whole image, resized to the crop
    loader = UnpairedLoader(ds, 2, crop_size=16, hflip=False, min_side=16, seed=1)
    whole = to_unit_range(resize_images(ds.a, 16))
    seen = []
    for epoch in range(60):  # one step an epoch; a side of 16 is drawn 1 time in 9
        loader.set_epoch(epoch)
        seen += [torch.equal(a, whole) or torch.equal(a, whole.flip(0)) for a, *_ in loader]
    assert any(seen) and not all(seen)
    with pytest.raises(CnnkitError, match="--min-load-size 12 must lie between --crop-size 16"):
        UnpairedLoader(ds, 2, crop_size=16, min_side=12)


def test_domains_of_different_sizes_are_cropped_each_from_its_own():
    # --load-size-b: B resized on its own, here to the crop, so every B crop is a whole image
    ds = load_unpaired(HORSE2ZEBRA, limit=3, load_size=24)
    ds.b = resize_images(ds.b, 16)
    loader = UnpairedLoader(ds, 3, crop_size=16, seed=2)
    a, b, b_for_d = next(iter(loader))
    assert b_for_d is b  # no scale of its own for D_B
    assert a.shape == b.shape == (3, 3, 16, 16)
    whole = to_unit_range(ds.b)
    assert all(any(torch.equal(x, w) or torch.equal(x, w.flip(-1)) for w in whole) for x in b)
    assert not all(any(torch.equal(x, w) for w in to_unit_range(resize_images(ds.a, 16)))
                   for x in a)  # A is cropped from its 24-pixel images, not resized
    with pytest.raises(CnnkitError, match="--crop-size 20 is larger than the 16×16 images"):
        UnpairedLoader(ds, 3, crop_size=20)


def test_discriminator_b_sees_the_same_b_images_at_a_scale_of_its_own():
    # --d-load-size-b: D_B's real zebras are whole 16-px images, F's are crops of 24-px ones
    ds = load_unpaired(HORSE2ZEBRA, limit=3, load_size=24)
    alone = [tuple(t.clone() for t in batch) for batch in UnpairedLoader(ds, 3, crop_size=16,
                                                                          seed=2)]
    ds.b_for_discriminator = resize_images(ds.b, 16)
    loader = UnpairedLoader(ds, 3, crop_size=16, seed=2)
    (a, b, b_for_d), = list(loader)
    assert torch.equal(a, alone[0][0]) and torch.equal(b, alone[0][1])  # their crops unchanged
    whole = to_unit_range(ds.b_for_discriminator)
    # the same image as B's crop, whole, in order (flipped or not)
    for x, k in zip(b_for_d, _b_sources(b, to_unit_range(ds.b))):
        assert torch.equal(x, whole[k]) or torch.equal(x, whole[k].flip(-1))
    ds.b_for_discriminator = resize_images(ds.b, 12)
    with pytest.raises(CnnkitError, match="--crop-size 16 is larger than the 12×12 images"):
        UnpairedLoader(ds, 3, crop_size=16)


def _b_sources(crops: torch.Tensor, images: torch.Tensor) -> list[int]:
    """Which of `images` (N, 3, S, S) each 16-px crop was cut from (flipped or not)."""
    def holds(image, crop):
        windows = image.unfold(1, 16, 1).unfold(2, 16, 1)  # (3, S-15, S-15, 16, 16)
        windows = windows.permute(1, 2, 0, 3, 4).flatten(0, 1)
        return any(torch.equal(w, c) for w in windows for c in (crop, crop.flip(-1)))
    sources = [[k for k, image in enumerate(images) if holds(image, crop)] for crop in crops]
    assert all(len(found) == 1 for found in sources)
    return [found[0] for found in sources]


def test_ranks_take_slices_of_the_one_process_batch():
    """Under torchrun, rank r of W with batch B gets the r-th B pairs of the batch B·W a single
    process draws — crops and flips included (real photos, random crops)."""
    ds = load_unpaired(HORSE2ZEBRA, limit=7, load_size=24)
    whole = UnpairedLoader(ds, 4, crop_size=16, seed=5)
    ranks = [UnpairedLoader(ds, 2, crop_size=16, seed=5, rank=r, world_size=2) for r in (0, 1)]
    for loader in (whole, *ranks):
        loader.set_epoch(2)
    assert len(whole) == len(ranks[0]) == 1  # 7 // 4, 7 // (2 · 2)
    for (a, b, _), (a0, b0, _), (a1, b1, _) in zip(whole, *ranks, strict=True):
        assert torch.equal(a, torch.cat([a0, a1])) and torch.equal(b, torch.cat([b0, b1]))


def test_horse2zebra_is_registered_and_reads_the_shared_folder(tmp_path):
    info = get_dataset_info("horse2zebra")
    assert info.task == "translate" and info.classes == ("horse", "zebra")
    assert (info.train_size, info.test_size) == (COUNTS["trainA"] + COUNTS["trainB"],
                                                 COUNTS["testA"] + COUNTS["testB"])
    test = load_dataset("horse2zebra", "test", data_dir=DATASETS, image_size=32, quiet=True)
    assert test.a.shape == (COUNTS["testA"], 3, 32, 32)
    assert test.b.shape == (COUNTS["testB"], 3, 32, 32)
    with pytest.raises(CnnkitError, match="horse2zebra is not downloaded automatically: put its "
                                          "files in .*horse2zebra-128"):
        load_dataset("horse2zebra", "train", data_dir=tmp_path)
