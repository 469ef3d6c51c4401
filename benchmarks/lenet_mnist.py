"""cnnkit's trainer against the plain tutorial loop (../shared/baselines/tutorial_lenet.py), on MNIST.

Both run in this one invocation, alternating, on the same machine:
  (a) training images/s at identical settings: the chapter's LeNet, batch 64, Adam lr 1e-3, one epoch;
      cnnkit is measured twice: in fp32 with NCHW (the pipeline alone) and with its defaults
      (bf16 autocast where the CPU has it, channels-last);
  (b) wall time to reach 99.0% test accuracy: cnnkit's default LeNet recipe against the tutorial recipe
      run for 1, 2, 3, ... epochs until its test accuracy reaches 99.0%.

usage: python benchmarks/lenet_mnist.py [--repeats 2] [--max-tutorial-epochs 6]
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from cnnkit.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
MNIST = SHARED / "datasets" / "mnist"
TUTORIAL = SHARED / "baselines" / "tutorial_lenet.py"


def tutorial(epochs: int, seed: int = 0) -> dict:
    """Run the baseline script as its own process; parse its one-line result."""
    out = subprocess.run([sys.executable, str(TUTORIAL), "--data", str(MNIST), "--epochs",
                          str(epochs), "--seed", str(seed)], capture_output=True, text=True,
                         check=True).stdout
    values = dict(re.findall(r"(\w+)=([\d.]+)", out))
    return {k: float(v) for k, v in values.items()}


def cnnkit_run(data_dir: Path, out_dir: Path, name: str, **overrides) -> dict:
    config = TrainConfig(model="lenet", dataset="mnist", data_dir=str(data_dir), mirror=None,
                         out_dir=str(out_dir), name=name, quiet=True, **overrides)
    result = train(config, log=lambda *_: None)
    seen = sum(r["img_per_s"] * r["epoch_s"] for r in result.history)
    pure_train_s = sum(r["epoch_s"] for r in result.history)
    return {"train_img_per_s": seen / pure_train_s, "train_s": result.train_seconds,
            "test_acc": result.test.top1, "epochs": len(result.history)}


def prepare_cache(tmp: Path) -> Path:
    """cnnkit's cache folder for MNIST, filled by linking the shared (checksummed) files."""
    cache = tmp / "cache" / "mnist"
    cache.mkdir(parents=True)
    for f in MNIST.glob("*.gz"):
        os.symlink(f, cache / f.name)
    return tmp / "cache"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max-tutorial-epochs", type=int, default=6)
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        cache = prepare_cache(tmp)
        # (a) throughput at identical settings, alternating runs
        same = dict(epochs=1, batch_size=64, optimizer="adam", lr=1e-3, momentum=0.9,
                    schedule="constant", val_fraction=0.0)
        rates = {"tutorial": [], "cnnkit fp32 NCHW": [], "cnnkit default": []}
        for i in range(args.repeats):
            rates["tutorial"].append(tutorial(1)["train_img_per_s"])
            rates["cnnkit fp32 NCHW"].append(cnnkit_run(
                cache, tmp, f"a32-{i}", precision="fp32", channels_last=False, **same)["train_img_per_s"])
            rates["cnnkit default"].append(cnnkit_run(cache, tmp, f"ad-{i}", **same)["train_img_per_s"])
        base = statistics.median(rates["tutorial"])
        print("\n(a) training images/s, LeNet, batch 64, Adam 1e-3 (median of "
              f"{args.repeats} alternating runs)")
        for name, values in rates.items():
            med = statistics.median(values)
            print(f"  {name:<18} {med:8.0f} img/s   ×{med / base:.2f}   runs: "
                  + ", ".join(f"{v:.0f}" for v in values))

        # (b) time to 99.0% test accuracy
        print("\n(b) wall time to 99.0% MNIST test accuracy")
        t0 = time.perf_counter()
        ours = cnnkit_run(cache, tmp, "recipe")
        ours_wall = time.perf_counter() - t0
        print(f"  cnnkit default recipe: {ours['epochs']} epochs, training {ours['train_s']:.1f} s "
              f"(whole run with data loading and test: {ours_wall:.1f} s), "
              f"test accuracy {ours['test_acc']:.4f}")
        reached = None
        for epochs in range(1, args.max_tutorial_epochs + 1):
            run = tutorial(epochs)
            print(f"  tutorial recipe, {epochs} epoch(s): training {run['train_s']:.1f} s, "
                  f"test accuracy {run['test_acc']:.4f}")
            if run["test_acc"] >= 0.99:
                reached = run
                break
        if ours["test_acc"] < 0.99:
            print("  cnnkit's recipe did NOT reach 99.0%")
        elif reached is None:
            print(f"  tutorial did not reach 99.0% within {args.max_tutorial_epochs} epochs")
        else:
            print(f"  time to 99.0%: tutorial {reached['train_s']:.1f} s vs cnnkit "
                  f"{ours['train_s']:.1f} s: cnnkit ×{reached['train_s'] / ours['train_s']:.2f} faster")


if __name__ == "__main__":
    main()
