"""Whole-batch augmentation against a per-sample reference loop (the loop lives only here)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cnnkit.data import BatchAugment, load_dataset
from cnnkit.data.augment import shift_images


@pytest.fixture(scope="module")
def digits_batch():
    return load_dataset("digits", "test").images[:64]  # real uint8 (64, 1, 28, 28)


def _reference_crop(x, dy, dx, radius):
    """Per sample: zero-pad by `radius`, cut the H×W window at offset (radius - dy, radius - dx)."""
    h, w = x.shape[-2:]
    out = torch.empty_like(x)
    for b in range(len(x)):
        padded = F.pad(x[b], (radius, radius, radius, radius))
        top, left = radius - int(dy[b]), radius - int(dx[b])
        out[b] = padded[:, top:top + h, left:left + w]
    return out


def test_shift_matches_per_sample_crop(digits_batch):
    generator = torch.Generator().manual_seed(1)
    dy = torch.randint(-3, 4, (64,), generator=generator)
    dx = torch.randint(-3, 4, (64,), generator=generator)
    shifted = shift_images(digits_batch, dy, dx, 3)
    assert shifted.equal(_reference_crop(digits_batch, dy, dx, 3))
    as_float = shift_images(digits_batch.float(), dy, dx, 3)
    assert as_float.dtype == torch.float32 and as_float.equal(shifted.float())


def test_translated_content_is_the_shifted_original(digits_batch):
    dy, dx = torch.tensor([2, -1, 0, 3]), torch.tensor([-3, 2, 0, 1])
    out = shift_images(digits_batch[:4], dy, dx, 3)
    for b in range(4):
        y, x = int(dy[b]), int(dx[b])
        src = digits_batch[b, :, max(0, -y):28 - max(0, y), max(0, -x):28 - max(0, x)]
        dst = out[b, :, max(0, y):28 - max(0, -y), max(0, x):28 - max(0, -x)]
        assert dst.equal(src)
        border = torch.ones(28, 28, dtype=torch.bool)
        border[max(0, y):28 - max(0, -y), max(0, x):28 - max(0, -x)] = False
        assert (out[b, :, border] == 0).all()
    assert out[2].equal(digits_batch[2])  # (0, 0): unchanged


def test_batch_augment_replays_its_draws(digits_batch):
    augment = BatchAugment(crop_padding=4, translate=2, hflip=True)
    out = augment(digits_batch, torch.Generator().manual_seed(7))
    replay = torch.Generator().manual_seed(7)  # the documented draw order, by hand
    crop = [torch.randint(-4, 5, (64,), generator=replay) for _ in range(2)]
    move = [torch.randint(-2, 3, (64,), generator=replay) for _ in range(2)]
    flip = torch.rand(64, generator=replay) < 0.5
    expected = _reference_crop(_reference_crop(digits_batch, *crop, 4), *move, 2)
    expected[flip] = expected[flip].flip(-1)
    assert out.equal(expected) and out.dtype == torch.uint8
    assert 16 < int(flip.sum()) < 48
    assert augment(digits_batch, torch.Generator().manual_seed(7)).equal(out)  # deterministic


def test_flip_twice_is_identity(digits_batch):
    flip = BatchAugment(hflip=True)
    once = flip(digits_batch, torch.Generator().manual_seed(3))
    assert flip(once, torch.Generator().manual_seed(3)).equal(digits_batch)
    changed = [not once[b].equal(digits_batch[b]) for b in range(64)]
    for b in range(64):
        assert once[b].equal(digits_batch[b].flip(-1) if changed[b] else digits_batch[b])
    assert 0 < sum(changed) < 64


def test_inactive_and_invalid_settings(digits_batch):
    assert not BatchAugment().active
    assert BatchAugment()(digits_batch, torch.Generator()).equal(digits_batch)
    with pytest.raises(ValueError, match="≥ 0"):
        BatchAugment(crop_padding=-1)
