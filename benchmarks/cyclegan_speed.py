"""CycleGAN training speed per resolution and generator size (issue 15).

Each row is a real `cnnkit cyclegan train` process on horse2zebra (`--train-limit N` images of
each domain, 2 epochs): the first epoch pays oneDNN's first-call costs, so the row reports the
second epoch's image pairs per second from the run's metrics.csv (one step = one horse and one
zebra through both generators, both discriminators and the two Adam updates). Rows:
  64 px   the CPU recipe (ngf 32, 6 blocks)      and the paper's 6-block generator (ngf 64)
  128 px  the paper's 6-block generator (the paper's choice at 128 px)
  256 px  the paper's 9-block generator (the paper's 256-px setting), fed upsampled 128-px photos
with the 70×70 PatchGAN (ndf 64) throughout, in the precision `--precision` gives (auto: bf16
autocast where the CPU computes bf16 natively). A row may name the generator's up-sampling as a
fourth field (`64:32:6:resize`; default the paper's transposed convolutions); repeat rows to
alternate two settings in one run. The wall time of an epoch of all 1,334 steps is
the step rate's consequence: 1,334 / rate.

usage: python benchmarks/cyclegan_speed.py [--precision auto,fp32] [--threads N]
       [--rows 64:32:6,64:32:6:resize,...]
"""
from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from _timing import cpu_name

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"
# (crop side, ngf, residual blocks); load side = crop × 1.125 (the paper's 286 for 256).
ROWS = ("64:32:6", "64:64:6", "128:64:6", "256:64:9")
STEPS_PER_EPOCH = 1334  # horse2zebra: the larger domain (zebras) sets an epoch


def pairs_per_second(out: Path, name: str, crop: int, ngf: int, blocks: int, upsample: str,
                     precision: str, threads: int | None) -> float:
    """Image pairs/s of the second of two epochs on a few images per domain."""
    limit = max(8, 4096 // crop)  # about 30-60 s a row on two cores
    command = [sys.executable, "-m", "cnnkit", "cyclegan", "train", "--dataset", "horse2zebra",
               "--data-dir", str(DATASETS), "--train-limit", str(limit), "--epochs", "2",
               "--decay-epochs", "0", "--crop-size", str(crop), "--load-size",
               str(crop * 9 // 8), "--ngf", str(ngf), "--n-blocks", str(blocks), "--grid-images",
               "1", "--upsample", upsample, "--precision", precision, "--quiet",
               "--no-tensorboard", "--out-dir", str(out), "--name", name]
    if threads:
        command += ["--threads", str(threads)]
    subprocess.run(command, check=True, capture_output=True)
    rows = list(csv.DictReader((out / name / "metrics.csv").open()))
    return float(rows[-1]["img_per_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--precision", default="auto", help="comma-separated: auto, fp32, bf16")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--rows", default=",".join(ROWS), help="crop:ngf:blocks[:upsample],...")
    args = parser.parse_args()
    precisions = args.precision.split(",")
    print(f"{cpu_name()}, {os.cpu_count()} cores, threads {args.threads or 'auto'}")
    print(f"{'crop':>5} {'ngf':>4} {'blocks':>6} {'upsample':>9} "
          + " ".join(f"{p + ' pairs/s':>14}" for p in precisions)
          + "   epoch (1,334 steps) at the first")
    with tempfile.TemporaryDirectory() as tmp:
        for index, row in enumerate(args.rows.split(",")):
            fields = row.split(":")
            crop, ngf, blocks = (int(v) for v in fields[:3])
            upsample = fields[3] if len(fields) > 3 else "transpose"
            rates = [pairs_per_second(Path(tmp), f"{index}-{row.replace(':', '-')}-{p}", crop,
                                      ngf, blocks, upsample, p, args.threads)
                     for p in precisions]
            minutes = STEPS_PER_EPOCH / rates[0] / 60
            print(f"{crop:>5} {ngf:>4} {blocks:>6} {upsample:>9} "
                  + " ".join(f"{r:>14.2f}" for r in rates) + f"   {minutes:.1f} min", flush=True)


if __name__ == "__main__":
    main()
