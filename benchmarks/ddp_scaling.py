"""Data-parallel scaling on this machine: training images/s of 1 process vs N under torchrun.

Weak scaling: every process steps on the same --batch-size, so N processes train a global batch
N× larger. Throughput is the trainer's own img/s column (summed over ranks, start-up excluded),
the median over the epochs after the first. Efficiency = img/s / (cores used × img/s of 1 × 1).
For comparison, one process using the same N cores through intra-op threads.

    python benchmarks/ddp_scaling.py --nproc 2 --dataset digits --epochs 4 --batch-size 32
    python benchmarks/ddp_scaling.py --dataset mnist --data-dir ../shared/datasets --epochs 3 \
        --batch-size 128
"""
from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def images_per_second(nproc: int, threads: int, args, out_dir: Path) -> float:
    name = f"scale{nproc}x{threads}"
    command = [sys.executable, "-m", "cnnkit", "train", "--dataset", args.dataset,
               "--model", args.model, "--epochs", str(args.epochs), "--batch-size",
               str(args.batch_size), "--val-fraction", "0", "--threads", str(threads), "--quiet",
               "--out-dir", str(out_dir), "--name", name]
    if args.data_dir:
        command += ["--data-dir", args.data_dir]
    if nproc > 1:
        command += ["--nproc", str(nproc)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run(command, check=True, env=env, capture_output=True, text=True)
    rows = list(csv.DictReader((out_dir / name / "metrics.csv").open()))
    return statistics.median(float(r["img_per_s"]) for r in rows[1:] or rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--model", default="lenet")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        one = images_per_second(1, 1, args, Path(tmp))
        one_all_cores = images_per_second(1, args.nproc, args, Path(tmp))
        many = images_per_second(args.nproc, 1, args, Path(tmp))
    print(f"{args.model} on {args.dataset}, batch {args.batch_size} per process, "
          f"{os.cpu_count()} CPU cores, median img/s of epochs 2..{args.epochs}")
    print("| processes × threads | global batch | img/s | speed-up vs 1 × 1 | efficiency |")
    print("|---|---:|---:|---:|---:|")
    for label, value, workers, batch in (
            ("1 × 1", one, 1, args.batch_size),
            (f"1 × {args.nproc} (intra-op threads)", one_all_cores, args.nproc, args.batch_size),
            (f"{args.nproc} × 1 (DDP, gloo)", many, args.nproc, args.nproc * args.batch_size)):
        print(f"| {label} | {batch} | {value:,.0f} | {value / one:.2f}× | "
              f"{value / (workers * one):.0%} |")


if __name__ == "__main__":
    main()
