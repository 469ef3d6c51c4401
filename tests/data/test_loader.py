"""The loaders: coverage, determinism from (seed, epoch), sharding, normalisation, streaming."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch.utils.data.distributed import DistributedSampler

from cnnkit.data import (BatchAugment, ImageFolderDataset, InMemoryLoader, StreamingLoader,
                         load_dataset)
from cnnkit.data.imagefolder import load_imagefolder
from cnnkit.data.loader import epoch_generator
from tests.data.conftest import unzip_cifar_test


@pytest.fixture(scope="module")
def digits():
    """Real digits whose labels are replaced by sample indices, to see which sample went where."""
    ds = load_dataset("digits", "test")  # 360 images
    return replace(ds, labels=torch.arange(len(ds)))


def _denormalise(x, ds):
    mean = torch.tensor(ds.mean).view(1, -1, 1, 1)
    std = torch.tensor(ds.std).view(1, -1, 1, 1)
    return (x * std + mean) * 255


def test_epoch_covers_every_sample_once(digits):
    loader = InMemoryLoader(digits, 64, shuffle=True, seed=3)
    batches = list(loader)
    assert len(batches) == len(loader) == 6  # ceil(360 / 64)
    seen = torch.cat([y for _, y in batches])
    assert seen.sort().values.equal(torch.arange(360)) and not seen.equal(torch.arange(360))
    for x, y in batches:  # the images travel with their labels, normalised with ds.mean/std
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert torch.allclose(_denormalise(x, digits), digits.images[y].float(), atol=1e-3)
    dropped = InMemoryLoader(digits, 64, shuffle=True, seed=3, drop_last=True)
    assert len(dropped) == len(list(dropped)) == 5
    assert all(len(y) == 64 for _, y in dropped)


def test_same_seed_and_epoch_give_identical_batches(digits):
    augment = BatchAugment(crop_padding=2, translate=1, hflip=True)
    loader = InMemoryLoader(digits, 100, shuffle=True, seed=5, augment=augment)
    loader.set_epoch(4)
    torch.manual_seed(0)
    global_state = torch.get_rng_state()
    first = list(loader)
    assert torch.get_rng_state().equal(global_state)  # the global RNG is neither used nor moved
    torch.manual_seed(12345)
    torch.rand(1000)
    other = InMemoryLoader(digits, 100, shuffle=True, seed=5, augment=augment)
    other.set_epoch(4)
    for (x1, y1), (x2, y2) in zip(first, other, strict=True):
        assert x1.equal(x2) and y1.equal(y2)
    other.set_epoch(5)
    assert not next(iter(other))[1].equal(first[0][1])  # another epoch, another order
    # The augmentation is BatchAugment with the epoch's own generator, applied by hand here.
    order = torch.randperm(360, generator=epoch_generator(5, 4, 0))
    expected = augment(digits.images[order[:100]], epoch_generator(5, 4, 1))
    assert first[0][1].equal(order[:100])
    assert torch.allclose(_denormalise(first[0][0], digits), expected.float(), atol=1e-3)


@pytest.mark.parametrize("shuffle", [False, True])
def test_ranks_take_disjoint_strided_shards(digits, shuffle):
    world = 7  # 360 = 7 × 51 + 3: four indices are repeated, as DistributedSampler pads
    shards = [InMemoryLoader(digits, 32, shuffle=shuffle, seed=1, rank=r, world_size=world)
              for r in range(world)]
    labels = [torch.cat([y for _, y in s]) for s in shards]
    assert all(len(y) == 52 for y in labels) and all(len(s) == 2 for s in shards)
    everything = torch.cat(labels)
    assert everything.unique().equal(torch.arange(360)) and len(everything) == 364
    if not shuffle:  # the reference: torch's own DistributedSampler over the same order
        for r in range(world):
            sampler = DistributedSampler(range(360), num_replicas=world, rank=r, shuffle=False)
            assert labels[r].tolist() == list(sampler)
    else:
        order = torch.randperm(360, generator=epoch_generator(1, 0, 0))
        padded = torch.cat([order, order[:4]])
        for r in range(world):
            assert labels[r].equal(padded[r::world])


def test_channels_last_changes_layout_not_values(digits):
    rgb = load_dataset("digits", "test", channels=3)
    plain = next(iter(InMemoryLoader(rgb, 50, shuffle=False)))[0]
    nhwc = next(iter(InMemoryLoader(rgb, 50, shuffle=False, channels_last=True)))[0]
    assert nhwc.is_contiguous(memory_format=torch.channels_last) and nhwc.equal(plain)
    assert plain.is_contiguous()


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    unzip_cifar_test(root, 12, ["cat", "dog", "frog", "horse"])
    return root


@pytest.mark.parametrize("shuffle, augment, workers", [
    (False, None, 0), (True, BatchAugment(crop_padding=4, hflip=True), 0), (True, None, 2)])
def test_streaming_matches_in_memory(small_folder, shuffle, augment, workers):
    folder = ImageFolderDataset(small_folder, "train", image_size=24)
    in_memory = load_imagefolder(small_folder, "train", image_size=24)
    kwargs = dict(shuffle=shuffle, seed=2, augment=augment, drop_last=False)
    streaming = StreamingLoader(folder, 16, num_workers=workers, **kwargs)
    reference = InMemoryLoader(in_memory, 16, **kwargs)
    for loader in (streaming, reference):
        loader.set_epoch(1)
    pairs = list(zip(streaming, reference, strict=True))
    assert len(pairs) == len(streaming) == 3  # 4 classes × round(12 × 0.8) = 40 images
    for (xs, ys), (xm, ym) in pairs:
        assert xs.equal(xm) and ys.equal(ym)
