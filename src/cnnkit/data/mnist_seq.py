"""`mnist-seq`: rows of 3–5 real MNIST digits to be read left to right, built on the fly.

Each image is a 28 × 140 canvas (room for five digits) holding `length` digits of one MNIST split
placed side by side, starting at a random left offset, so a reader has to find the sequence,
not just cut the canvas into five fixed cells. The target is the digits, then END (class 10) for
the unused positions: labels (N, 5). The multi-digit reading task of Ba, Mnih & Kavukcuoglu 2014,
"Multiple Object Recognition with Visual Attention" (https://arxiv.org/abs/1412.7755), without
their random clutter.

Everything is drawn from a private generator seeded per split, so a split is the same images on
every machine and every call; the train split uses only MNIST training digits, the test split
only MNIST test digits (no digit image is shared between them).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from cnnkit.data.array_dataset import ArrayDataset
from cnnkit.utils import CnnkitError

DIGIT_SIZE = 28  # MNIST's side: every digit is pasted whole, unscaled
MIN_LEN, MAX_LEN = 3, 5
CANVAS_WIDTH = DIGIT_SIZE * MAX_LEN  # 140
END = 10  # the class of every position after the last digit
CLASSES = [str(d) for d in range(10)] + ["end"]
# A documented choice: as many sequences as MNIST has digit images in each split (each digit
# then appears in about MIN..MAX_LEN sequences, at different positions and with other neighbours).
SIZES = {"train": 60_000, "test": 10_000}
SEEDS = {"train": 20_140_001, "test": 20_140_002}  # fixed per split
# channel_stats() of the 60,000 training canvases (tests/data/test_mnist_seq.py recomputes them):
# lower than MNIST's 0.1307 / 0.3081 because on average a fifth of each canvas is empty.
MEAN, STD = 0.1046, 0.2806
_CHUNK = 4096  # canvases rendered per step: bounds the index tensors, not the result


@dataclass(frozen=True)
class SequencePlan:
    """Which digits go where. N sequences of at most MAX_LEN digits.

    lengths: int64 (N,) in MIN_LEN..MAX_LEN; offsets: int64 (N,), the canvas column of the first
    digit's left edge, in 0..CANVAS_WIDTH − DIGIT_SIZE·length; sources: int64 (N, MAX_LEN), the
    index of each digit in its MNIST split, −1 after the last digit.
    """

    lengths: torch.Tensor
    offsets: torch.Tensor
    sources: torch.Tensor

    def __len__(self) -> int:
        return len(self.lengths)


def plan_sequences(num_digits: int, count: int, seed: int) -> SequencePlan:
    """Draw `count` sequences over a split of `num_digits` images (digits drawn with replacement).

    length ~ uniform{MIN_LEN..MAX_LEN}; offset ~ uniform{0..CANVAS_WIDTH − DIGIT_SIZE·length};
    each digit ~ uniform over the split. Only `torch.Generator(seed)` is used.
    """
    if num_digits < 1 or count < 0:
        raise CnnkitError(f"need at least one digit image and count ≥ 0, got {num_digits} digit "
                          f"images and count {count}")
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(MIN_LEN, MAX_LEN + 1, (count,), generator=generator)  # (N,)
    slack = CANVAS_WIDTH - DIGIT_SIZE * lengths  # (N,) free columns: 56, 28 or 0
    # Uniform integer in 0..slack: floor(u·(slack + 1)) with u in [0, 1).
    offsets = (torch.rand(count, generator=generator, dtype=torch.float64) * (slack + 1)).long()
    sources = torch.randint(0, num_digits, (count, MAX_LEN), generator=generator)  # (N, T)
    unused = torch.arange(MAX_LEN) >= lengths[:, None]  # (N, T)
    return SequencePlan(lengths, offsets.minimum(slack), sources.masked_fill(unused, -1))


def render_sequences(digits: torch.Tensor, plan: SequencePlan) -> torch.Tensor:
    """uint8 (M, 1, 28, 28) digit images → uint8 (N, 1, 28, CANVAS_WIDTH) canvases of `plan`.

    Canvas column c shows column (c − offset) mod 28 of digit (c − offset) // 28 where that digit
    exists, else 0 (MNIST's background): one gather per chunk, no per-sequence Python.
    """
    if digits.dtype != torch.uint8 or tuple(digits.shape[1:]) != (1, DIGIT_SIZE, DIGIT_SIZE):
        raise CnnkitError(f"digits must be uint8 (M, 1, {DIGIT_SIZE}, {DIGIT_SIZE}), got "
                          f"{digits.dtype} {tuple(digits.shape)}")
    grey = digits[:, 0]  # (M, 28, 28)
    out = torch.empty(len(plan), 1, DIGIT_SIZE, CANVAS_WIDTH, dtype=torch.uint8)
    columns = torch.arange(CANVAS_WIDTH)  # (W,)
    for start in range(0, len(plan), _CHUNK):
        stop = start + _CHUNK
        lengths, offsets = plan.lengths[start:stop], plan.offsets[start:stop]
        rel = columns[None] - offsets[:, None]  # (n, W): column relative to the first digit
        inside = (rel >= 0) & (rel < DIGIT_SIZE * lengths[:, None])  # (n, W)
        slot = rel.clamp(0, CANVAS_WIDTH - 1).div(DIGIT_SIZE, rounding_mode="floor")  # (n, W)
        source = plan.sources[start:stop].gather(1, slot).clamp_min(0)  # (n, W) digit index
        strips = grey[source, :, rel % DIGIT_SIZE]  # (n, W, 28): the pixel column of each
        strips[~inside] = 0
        out[start:stop, 0] = strips.transpose(1, 2)  # (n, 28, W)
    return out


def sequence_labels(digit_labels: torch.Tensor, plan: SequencePlan) -> torch.Tensor:
    """int64 (N, MAX_LEN): the class of each placed digit, then END."""
    labels = digit_labels.long()[plan.sources.clamp_min(0)]  # (N, T)
    return labels.masked_fill(plan.sources < 0, END)


def build_mnist_seq(digits: torch.Tensor, digit_labels: torch.Tensor, split: str, *,
                    count: int | None = None) -> ArrayDataset:
    """The `split` sequences from that split's MNIST digits (uint8 (M, 1, 28, 28), labels (M,)).

    `count` defaults to SIZES[split]; the seed is always SEEDS[split], so a smaller `count`
    is a different draw, not a prefix.
    """
    if split not in SEEDS:
        raise CnnkitError(f"unknown split '{split}' for mnist-seq; choose train or test")
    if len(digits) != len(digit_labels):
        raise CnnkitError(f"{len(digits)} digit images but {len(digit_labels)} labels")
    plan = plan_sequences(len(digits), SIZES[split] if count is None else count, SEEDS[split])
    return ArrayDataset(render_sequences(digits, plan), sequence_labels(digit_labels, plan),
                        list(CLASSES), "mnist-seq", False, (MEAN,), (STD,))
