"""Unpaired image folders for translation between two domains, and their batch loader.

Layout (the "unaligned" format of the CycleGAN authors' code, so users bring their own domains):

    ROOT/trainA/*.jpg|png   domain A training images      ROOT/testA/   domain A test images
    ROOT/trainB/*.jpg|png   domain B training images      ROOT/testB/   domain B test images

No pairing: an image of A has no counterpart in B (Zhu et al. 2017, §1). `load_unpaired` decodes a
split of both domains once into uint8 tensors (RGB, resized to `load_size` when given);
`UnpairedLoader` draws (A batch, B batch, B batch for D_B) with random crops and flips (and,
when asked, a random rescale before cropping) as whole-batch ops, random only through (seed,
epoch), so an interrupted run resumes with the same batches.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from cnnkit.data.array_dataset import resize_images
from cnnkit.data.augment import flip_images
from cnnkit.data.imagefolder import IMAGE_EXTENSIONS, decode_image
from cnnkit.data.loader import epoch_generator
from cnnkit.utils import CnnkitError

DOMAINS = ("A", "B")
SPLITS = ("train", "test")
LAYOUT = "ROOT/trainA, trainB, testA, testB, each holding the images of one domain"
_ORDER, _AUGMENT = 0, 1  # independent random streams of an epoch


@dataclass
class UnpairedDataset:
    """One split of two domains: a, b uint8 (N_A, 3, H, W) and (N_B, 3, H', W'); as loaded both
    share one size, a per-domain training scale (--load-size-b) resizes b. `b_for_discriminator`:
    the same B images at the scale D_B sees real B at (--d-load-size-b), when set apart."""

    a: torch.Tensor
    b: torch.Tensor
    files_a: list[str]
    files_b: list[str]
    name: str
    b_for_discriminator: torch.Tensor | None = None

    def __len__(self) -> int:
        """Images of an epoch: every image of the larger domain once (the authors' rule)."""
        return max(len(self.a), len(self.b))


def domain_files(root: str | Path, split: str, domain: str) -> list[Path]:
    """The image files of ROOT/<split><domain>, sorted; a missing or empty folder, or a file that
    is not an image, is a one-line CnnkitError naming it."""
    if split not in SPLITS or domain not in DOMAINS:
        raise CnnkitError(f"unknown split/domain '{split}{domain}'; choose from trainA, trainB, "
                          f"testA, testB")
    folder = Path(root).expanduser() / f"{split}{domain}"
    if not folder.is_dir():
        raise CnnkitError(f"{folder} is missing: an unpaired data set needs {LAYOUT}")
    files = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    for path in files:
        if not path.is_file() or path.suffix.lower() not in IMAGE_EXTENSIONS:
            raise CnnkitError(f"{path} is not an image file ({', '.join(sorted(IMAGE_EXTENSIONS))})"
                              f"; a domain folder holds only images")
    if not files:
        raise CnnkitError(f"{folder} holds no images; put the {split} images of domain {domain} "
                          f"there")
    return files


def load_unpaired(root: str | Path, split: str = "train", *, load_size: int | None = None,
                  limit: int | None = None, name: str | None = None,
                  quiet: bool = True) -> UnpairedDataset:
    """Decode ROOT/<split>A and ROOT/<split>B into RGB uint8 tensors.

    `load_size`: resize every image to load_size × load_size (antialiased bilinear), as the
    authors' "resize_and_crop" does before its random crop; None keeps the images' own size, which
    must then be the same for every image. `limit`: only the first N files of each domain.
    """
    root = Path(root).expanduser()
    tensors, names = [], []
    first: tuple[Path, tuple[int, int]] | None = None
    for domain in DOMAINS:
        files = domain_files(root, split, domain)[:limit]
        images = []
        for path in _progress(files, f"decoding {split}{domain}", quiet):
            x = decode_image(path, channels=3, image_size=load_size)  # (3, H, W) uint8
            size = tuple(x.shape[-2:])
            if first is None:
                first = (path, size)
            elif size != first[1]:
                raise CnnkitError(f"{path} is {size[0]}×{size[1]} but {first[0]} is "
                                  f"{first[1][0]}×{first[1][1]}: the images must share one size "
                                  f"(or set --load-size to resize them all)")
            images.append(x)
        tensors.append(torch.stack(images))  # (N, 3, H, W)
        names.append([p.name for p in files])
    return UnpairedDataset(tensors[0], tensors[1], names[0], names[1], name or root.name)


def _progress(files: list[Path], desc: str, quiet: bool):
    from tqdm import tqdm  # noqa: PLC0415
    return tqdm(files, desc=desc, leave=False, disable=quiet)


# --- whole-batch augmentation ---

def crop_images(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, size: int) -> torch.Tensor:
    """The size × size window of image b at (top[b], left[b]): one gather, no loop over samples."""
    b, c, h, w = x.shape
    rows = top.view(b, 1, 1) + torch.arange(size).view(1, size, 1)  # (B, S, 1)
    cols = left.view(b, 1, 1) + torch.arange(size).view(1, 1, size)  # (B, 1, S)
    index = (rows * w + cols).view(b, 1, size * size).expand(b, c, size * size)  # (B, C, S*S)
    return x.flatten(2).gather(2, index).view(b, c, size, size)


def random_crop_flip(x: torch.Tensor, size: int, generator: torch.Generator, *,
                     hflip: bool = True) -> torch.Tensor:
    """A uniformly placed size × size crop of each image, then a left-right flip with probability
    1/2 (the authors' RandomCrop + RandomHorizontalFlip). Draw order: tops, lefts, flip coins."""
    b, _, h, w = x.shape
    top = torch.randint(0, h - size + 1, (b,), generator=generator)
    left = torch.randint(0, w - size + 1, (b,), generator=generator)
    x = crop_images(x, top, left, size)
    if hflip:
        x = flip_images(x, torch.rand(b, generator=generator) < 0.5)
    return x


def random_rescale(x: torch.Tensor, min_side: int, generator: torch.Generator) -> torch.Tensor:
    """Scale augmentation: the batch of square images resized to one side drawn uniformly from
    [min_side, their own side], so that crops of it show the objects at every size in between
    (the test images are translated whole, at another scale than the crops)."""
    side = int(torch.randint(min_side, x.shape[-1] + 1, (1,), generator=generator))
    return resize_images(x, side)


def to_unit_range(x: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 → float32 [-1, 1], the range of the generators' Tanh."""
    return x.float().div_(127.5).sub_(1.0)


# --- the loader ---

def cycled_permutation(n: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """`length` indices into n items: fresh permutations of range(n) joined end to end, so the
    smaller domain is seen about equally often, each image once per pass."""
    passes = -(-length // n)  # ceil
    return torch.cat([torch.randperm(n, generator=generator) for _ in range(passes)])[:length]


class UnpairedLoader:
    """(A batch, B batch, B batch for D_B) of float32 (B, 3, crop, crop) in [-1, 1] per step.

    An epoch has max(N_A, N_B) // (batch_size · world_size) steps (the last partial batch
    dropped); each domain's order is a permutation (cycled for the smaller domain) drawn from
    (seed, epoch), its crops and flips from an independent stream of the same (seed, epoch).
    Under torchrun each step's global batch of batch_size · world_size pairs is drawn as one
    process would draw it, and rank r takes its r-th slice: the ranks' batches together are
    exactly the one-process batch of batch_size · world_size. The third batch is the second
    itself, unless the data set holds B at a scale of its own for D_B (`b_for_discriminator`): then
    it is the same B images cropped from that scale, with crops and flips of their own.
    """

    def __init__(self, ds: UnpairedDataset, batch_size: int, *, crop_size: int, hflip: bool = True,
                 min_side: int | None = None, seed: int = 0, rank: int = 0, world_size: int = 1):
        for images in (ds.a, ds.b, ds.b_for_discriminator):
            if images is None:
                continue
            height, width = images.shape[-2:]
            if crop_size > min(height, width):
                raise CnnkitError(f"--crop-size {crop_size} is larger than the {height}×{width} "
                                  f"images of {ds.name}; lower it or raise --load-size")
            if min_side is not None and images is not ds.b_for_discriminator and not (
                    height == width and crop_size <= min_side <= height):
                raise CnnkitError(f"--min-load-size {min_side} must lie between --crop-size "
                                  f"{crop_size} and the side of the square images "
                                  f"({height}×{width})")
        self.dataset, self.batch_size, self.crop_size = ds, batch_size, crop_size
        self.min_side = min_side
        self.hflip, self.seed, self.epoch = hflip, seed, 0
        self.rank, self.world_size = rank, world_size
        self.num_samples = len(ds)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples // (self.batch_size * self.world_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        ds, n = self.dataset, self.num_samples
        order = epoch_generator(self.seed, self.epoch, _ORDER)
        index_a = cycled_permutation(len(ds.a), n, order)  # (n,)
        index_b = cycled_permutation(len(ds.b), n, order)
        augment = epoch_generator(self.seed, self.epoch, _AUGMENT)
        step = self.batch_size * self.world_size
        mine = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        for start in range(0, len(self) * step, step):
            # Every rank draws the whole global batch's crops, so the streams stay in step.
            a, b = ds.a[index_a[start:start + step]], ds.b[index_b[start:start + step]]
            if self.min_side is not None:
                a, b = (random_rescale(x, self.min_side, augment) for x in (a, b))
            a = random_crop_flip(a, self.crop_size, augment, hflip=self.hflip)
            b = random_crop_flip(b, self.crop_size, augment, hflip=self.hflip)
            a, b = to_unit_range(a[mine]), to_unit_range(b[mine])
            if ds.b_for_discriminator is None:
                yield a, b, b
                continue
            # Drawn after the others, so that runs without it keep their crops.
            b_for_d = random_crop_flip(ds.b_for_discriminator[index_b[start:start + step]],
                                       self.crop_size, augment, hflip=self.hflip)
            yield a, b, to_unit_range(b_for_d[mine])
