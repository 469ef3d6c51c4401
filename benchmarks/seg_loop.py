"""Segmentation training images/s: cnnkit's loop against a plain PyTorch loop, same model.

Both train `unet_small` (1.94 M parameters) on CamVid's 367 training frames (240×180), batch 8,
random 176×176 crops and horizontal flips, Adam, one epoch, alternating in this one invocation:
  plain   a `Dataset` that opens the JPEG and the label PNG with PIL for every sample, crops and
          flips it in NumPy, a `DataLoader` (2 workers, the cores there are), fp32, NCHW — the
          loop of the usual tutorials;
  cnnkit  `cnnkit train --model unet_small --dataset camvid` with those settings and its
          defaults (decoded once into memory, whole-batch augmentation, autocast where the CPU
          computes bf16 natively, channels-last), run as its own process; images/s from its
          metrics.csv (training steps only).

usage: python benchmarks/seg_loop.py [--repeats 3]
"""
from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from cnnkit.models import create_model

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"
CAMVID = DATASETS / "camvid-240"
CROP, BATCH, VOID = 176, 8, 11


class PlainCamVid(torch.utils.data.Dataset):
    """Per-sample decoding and augmentation, as a tutorial would write it."""

    def __init__(self, root: Path):
        self.images = sorted((root / "train").glob("*.jpg"))
        self.root = root
        self.mean = np.array([0.39, 0.40, 0.41], np.float32)  # rough CamVid statistics
        self.std = np.array([0.30, 0.31, 0.31], np.float32)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        path = self.images[i]
        image = np.asarray(Image.open(path).convert("RGB"), np.float32) / 255  # (H, W, 3)
        mask = np.asarray(Image.open(self.root / "trainannot" / f"{path.stem}.png"), np.int64)
        mask = np.where(mask == VOID, 255, mask)
        y = np.random.randint(0, image.shape[0] - CROP + 1)
        x = np.random.randint(0, image.shape[1] - CROP + 1)
        image, mask = image[y:y + CROP, x:x + CROP], mask[y:y + CROP, x:x + CROP]
        if np.random.rand() < 0.5:
            image, mask = image[:, ::-1], mask[:, ::-1]
        image = (image - self.mean) / self.std
        return (torch.from_numpy(image.transpose(2, 0, 1).copy()),
                torch.from_numpy(mask.copy()))


def plain_epoch() -> float:
    """Images/s of one epoch of the plain loop (the model built fresh, as cnnkit's run does)."""
    torch.manual_seed(0)
    model = create_model("unet_small", num_classes=11, in_chans=3)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    loader = torch.utils.data.DataLoader(PlainCamVid(CAMVID), batch_size=BATCH, shuffle=True,
                                         drop_last=True, num_workers=2)
    seen, start = 0, time.perf_counter()
    for x, y in loader:
        loss = F.cross_entropy(model(x), y, ignore_index=255)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seen += len(x)
    return seen / (time.perf_counter() - start)


def cnnkit_epoch(out: Path, name: str) -> float:
    subprocess.run([sys.executable, "-m", "cnnkit", "train", "--model", "unet_small",
                    "--dataset", "camvid", "--data-dir", str(DATASETS), "--epochs", "1",
                    "--batch-size", str(BATCH), "--crop-size", str(CROP), "--val-fraction", "0",
                    "--quiet", "--no-tensorboard", "--out-dir", str(out), "--name", name],
                   check=True, capture_output=True)
    row = next(csv.DictReader((out / name / "metrics.csv").open()))
    return float(row["img_per_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    results = {"plain": [], "cnnkit": []}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            order = ["plain", "cnnkit"] if repeat % 2 == 0 else ["cnnkit", "plain"]
            for which in order:
                value = (plain_epoch() if which == "plain"
                         else cnnkit_epoch(Path(tmp), f"camvid-{repeat}"))
                results[which].append(value)
                print(f"  {which:<6} repeat {repeat + 1}: {value:6.1f} img/s", flush=True)
    plain, ours = (statistics.median(results[k]) for k in ("plain", "cnnkit"))
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
          f"{torch.__version__}, median of {args.repeats} alternating epochs")
    print(f"plain PyTorch loop {plain:.1f} img/s | cnnkit {ours:.1f} img/s | ratio "
          f"{ours / plain:.2f}x")


if __name__ == "__main__":
    main()
