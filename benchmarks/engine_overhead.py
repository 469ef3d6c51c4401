"""The one run engine against the code before it: training images/s of LeNet/MNIST and of the
default DDPM U-Net, old and new code measured in this one invocation, alternating.

The old code is the commit before the engine (default 9339298), exported with `git archive` into
a temporary folder and run as its own process with PYTHONPATH pointing at it; the new code is
this working tree, run the same way. Each run's images/s is read from its metrics.csv
(`img_per_s`, the training steps only: validation, sample grids and checkpoints excluded).

  LeNet:  cnnkit train --model lenet --dataset mnist --epochs 1 (recipe batch 128)
  DDPM:   cnnkit diffusion train --dataset digits --epochs 3 (default 1.1 M U-Net, batch 128;
          digits are 28×28 like MNIST, so a step costs the same, and an epoch takes seconds)

usage: python benchmarks/engine_overhead.py [--repeats 3] [--old-rev 9339298]
"""
from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "datasets" / "mnist"

JOBS = {
    "lenet-mnist": ["train", "--model", "lenet", "--dataset", "mnist", "--epochs", "1"],
    "ddpm-digits": ["diffusion", "train", "--dataset", "digits", "--epochs", "3"],
}


def export_revision(rev: str, dest: Path) -> Path:
    """`git archive REV src` unpacked into dest: that commit's code, importable as cnnkit."""
    dest.mkdir(parents=True)
    archive = dest / "code.tar"
    subprocess.run(["git", "-C", str(ROOT), "archive", "-o", str(archive), rev, "src"], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    return dest / "src"


def run_job(src: Path, job: str, cache: Path, out: Path, name: str) -> float:
    """Images/s of the job's training epochs, from the run's metrics.csv (mean over epochs)."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    subprocess.run([sys.executable, "-m", "cnnkit", *JOBS[job], "--data-dir", str(cache),
                    "--out-dir", str(out), "--name", name, "--quiet"], env=env, check=True,
                   capture_output=True)
    rows = list(csv.DictReader((out / name / "metrics.csv").open()))
    seconds = sum(float(r["epoch_s"]) for r in rows)
    images = sum(float(r["img_per_s"]) * float(r["epoch_s"]) for r in rows)
    return images / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--old-rev", default="9339298")
    parser.add_argument("--new-rev", default=None,
                        help="measure this commit instead of the working tree")
    parser.add_argument("--jobs", nargs="+", choices=list(JOBS), default=list(JOBS))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cache = tmp / "cache" / "mnist"
        cache.mkdir(parents=True)
        for f in MNIST.glob("*.gz"):
            os.symlink(f, cache / f.name)
        versions = {"old": export_revision(args.old_rev, tmp / "old"),
                    "new": (export_revision(args.new_rev, tmp / "new") if args.new_rev
                            else ROOT / "src")}
        results = {(job, v): [] for job in args.jobs for v in versions}
        for repeat in range(args.repeats):
            for job in args.jobs:
                # Alternate the order too, so that a drift in machine load hits both alike.
                order = list(versions) if repeat % 2 == 0 else list(reversed(versions))
                for version in order:
                    value = run_job(versions[version], job, tmp / "cache", tmp / "runs",
                                    f"{job}-{version}-{repeat}")
                    results[(job, version)].append(value)
                    print(f"  {job:<12} {version}  repeat {repeat + 1}: {value:8.1f} img/s",
                          flush=True)
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"old = {args.old_rev}, new = {args.new_rev or 'working tree'}, median of {args.repeats} alternating runs")
    print(f"{'job':<12} {'old img/s':>10} {'new img/s':>10} {'new/old':>8}")
    for job in args.jobs:
        old = statistics.median(results[(job, "old")])
        new = statistics.median(results[(job, "new")])
        print(f"{job:<12} {old:10.1f} {new:10.1f} {new / old:8.3f}")


if __name__ == "__main__":
    main()
