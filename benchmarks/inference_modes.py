"""CPU inference modes against eager fp32, in one run (issue 4, "Fast inference on CPU").

(a) ResNet-50, batch 16, 3×224×224, random weights: images/s of eager fp32 (NCHW), channels-last,
    bf16 autocast + channels-last, and torch.compile (inductor, weights frozen) of the fastest
    eager mode. All modes are timed in alternating rounds so that a change in machine load hits
    them alike; the median pass counts; compile time is reported apart. Top-1 agreement with fp32
    is measured on real CIFAR-10 test photos resized to 224×224 (a weak signal for random
    weights, whose logits are nearly flat). Target: the fast mode ≥ 3.5× eager fp32.
(b) The digits LeNet (`make run`'s recipe, trained here): the mode `choose_mode` picks for
    `cnnkit eval` / `predict`, with every eager mode's speed and agreement on the 360 test images.

usage: python benchmarks/inference_modes.py [--rounds 3] [--iters 3] [--images 32]
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from cnnkit.data import load_dataset
from cnnkit.models import create_model
from cnnkit.train import TrainConfig, train
from cnnkit.inference.load import load_model
from cnnkit.inference.modes import (EAGER_MODES, MODES, agreement, choose_mode, compare_modes,
                                    format_table, photo_images)


CIFAR10_TEST = (Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "cifar10-jpg"
                / "test.zip")


def resnet50_modes(args) -> None:
    torch.manual_seed(0)
    model = create_model("resnet50").eval()
    photos = photo_images(max(args.images, 16), 3, 224, 224, source=CIFAR10_TEST)
    batch = photos[0][:16].contiguous() if photos else torch.randn(16, 3, 224, 224)
    print(f"\n(a) resnet50, random weights, batch 16 × 3×224×224, {args.rounds} alternating "
          f"rounds × {args.iters} passes per mode, median")
    results = compare_modes(model, batch, MODES, rounds=args.rounds, iters=args.iters)
    agreements = {}
    if photos is not None and args.images > 0:
        images = photos[0][:args.images]
        for r in results:
            if r.runner is not None:
                agreements[r.mode] = agreement(model, r.runner, images, batch_size=16)
        print(f"top-1 agreement with fp32 on {len(images)} CIFAR-10 test photos resized to "
              f"224×224 (random weights: a weak signal)")
    print(format_table(results, agreements))
    fp32 = results[0].images_per_s
    fast = max((r for r in results[1:] if r.images_per_s), key=lambda r: r.images_per_s)
    print(f"fast mode: {fast.mode}, {fast.images_per_s / fp32:.2f}× eager fp32 "
          f"(target ≥ 3.5×)")


def digits_choice() -> None:
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        # One thread for training: on a busy machine two spinning OpenMP threads crawl, and the
        # training time is not what this benchmark measures.
        result = train(TrainConfig(dataset="digits", quiet=True, out_dir=tmp, name="lenet",
                                   threads=1), log=lambda *_: None)
        loaded = load_model(result.run_dir / "best.pt")
    torch.set_num_threads(threads)  # the trainer set it for the whole process
    model = loaded.model
    test = load_dataset("digits", "test")
    images = (test.images.float() / 255 - loaded.mean[0]) / loaded.std[0]  # (360, 1, 28, 28)
    print(f"\n(b) digits LeNet (trained here in {time.perf_counter() - start:.0f} s, test "
          f"accuracy {result.test.top1:.4f}), its 360 test images, batch 64")
    start = time.perf_counter()
    mode, agree = choose_mode(model, images)
    print(f"choose_mode picks: {mode} (top-1 agreement with fp32 {agree:.4f}; decided in "
          f"{time.perf_counter() - start:.2f} s)")
    results = compare_modes(model, images[:64], EAGER_MODES, rounds=3, iters=5)
    print(format_table(results, {r.mode: agreement(model, r.runner, images) for r in results}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iters", type=int, default=3, help="timed passes per mode per round")
    parser.add_argument("--images", type=int, default=32, help="photos for the agreement check")
    parser.add_argument("--skip-resnet", action="store_true")
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    if not args.skip_resnet:
        resnet50_modes(args)
    digits_choice()


if __name__ == "__main__":
    main()
