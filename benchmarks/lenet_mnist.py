"""cnnkit's trainer against the plain tutorial loop (../shared/baselines/tutorial_lenet.py), on MNIST.

Everything runs in this one invocation, on the same machine, cnnkit and the tutorial alternating:
  (a) training images/s at identical settings: the chapter's LeNet, batch 64, Adam lr 1e-3, one
      epoch; cnnkit in fp32 with NCHW (the pipeline alone) and with its defaults (bf16 autocast
      where the CPU has it, channels-last);
  (b) wall time to 99.0% test accuracy (issue 17), each side as its own process, from process start
      to its printed test accuracy: `cnnkit train --model lenet --dataset mnist` (the default
      recipe) for --seeds seeds, against the tutorial recipe run for 1, 2, 3, ... epochs until it
      reaches 99.0%; the ratio of the medians;
  (c) where cnnkit's time goes: the moments its output lines appear (start-up and imports; data,
      model and optimiser; the epoch; the test; the figures; the interpreter's exit), the two
      imports inside them and the decoding of MNIST's gzip files measured alone;
  (d) 99.3%: the default recipe with 2 and 3 epochs, for the same seeds.

usage: python benchmarks/lenet_mnist.py [--repeats 2] [--seeds 5] [--max-tutorial-epochs 6]
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from _timing import cpu_name
from cnnkit.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
MNIST = SHARED / "datasets" / "mnist"
TUTORIAL = SHARED / "baselines" / "tutorial_lenet.py"
CNNKIT = [sys.executable, "-m", "cnnkit"]


def stamped(argv: list[str]) -> tuple[list[tuple[float, str]], float]:
    """Run argv; (seconds since start when each output line appeared, that line), exit wall."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # lines arrive as they are printed
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)
    lines = [(time.perf_counter() - start, line.rstrip("\n")) for line in proc.stdout]
    if proc.wait() != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n" + "\n".join(t for _, t in lines))
    return lines, time.perf_counter() - start


def tutorial(epochs: int, seed: int = 0) -> dict:
    """The baseline script as its own process: its one-line result and its wall time."""
    lines, wall = stamped([sys.executable, str(TUTORIAL), "--data", str(MNIST), "--epochs",
                           str(epochs), "--seed", str(seed)])
    values = {k: float(v) for k, v in re.findall(r"(\w+)=([\d.]+)", lines[-1][1])}
    return {**values, "wall_s": lines[-1][0], "exit_s": wall}


def cnnkit_cli(data_dir: Path, out_dir: Path, seed: int, *extra: str) -> dict:
    """`cnnkit train --model lenet --dataset mnist` as a user runs it; when each line came."""
    lines, exit_s = stamped([*CNNKIT, "train", "--model", "lenet", "--dataset", "mnist",
                             "--data-dir", str(data_dir), "--out-dir", str(out_dir), "--seed",
                             str(seed), "--quiet", *extra])
    def first(prefix: str) -> int:
        return next(i for i, (_, text) in enumerate(lines) if text.lstrip().startswith(prefix))
    at = {key: lines[first(prefix)][0] for key, prefix in (
        ("threads", "threads:"), ("header", "lenet:"), ("test", "test, weights"),
        ("result", "test accuracy:"))}
    table = first("epoch ")  # the table's heading; one row per epoch follows
    rows = [text.split() for _, text in lines[table + 1:first("test, weights")]]
    return {"at": at, "epoch_s": sum(float(row[-2]) for row in rows),  # column epoch_s
            "last_epoch_at": lines[table + len(rows)][0], "exit_s": exit_s, "epochs": len(rows),
            "test_acc": float(lines[first("test accuracy:")][1].split()[2])}


def cnnkit_run(data_dir: Path, out_dir: Path, name: str, **overrides) -> dict:
    """In this process (for images/s at the tutorial's exact settings)."""
    config = TrainConfig(model="lenet", dataset="mnist", data_dir=str(data_dir), mirror=None,
                         out_dir=str(out_dir), name=name, quiet=True, **overrides)
    result = train(config, log=lambda *_: None)
    seen = sum(r["img_per_s"] * r["epoch_s"] for r in result.history)
    return {"train_img_per_s": seen / sum(r["epoch_s"] for r in result.history)}


def python_seconds(code: str, repeats: int = 3) -> float:
    """Median wall of `python -c code`, minus that of a bare interpreter; both leave through
    os._exit, so that the interpreter's tear-down (itself ~0.5 s after torch) is not counted."""
    def wall(c: str) -> float:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", c + "; import os; os._exit(0)"], check=True)
        return time.perf_counter() - start
    return statistics.median(wall(code) - wall("pass") for _ in range(repeats))


def prepare_cache(tmp: Path) -> Path:
    """cnnkit's data folder for MNIST, filled by linking the shared (checksummed) files."""
    cache = tmp / "data" / "mnist"
    cache.mkdir(parents=True)
    for f in MNIST.glob("*.gz"):
        os.symlink(f, cache / f.name)
    return tmp / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--max-tutorial-epochs", type=int, default=6)
    args = parser.parse_args()
    print(f"machine: {cpu_name()}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        data = prepare_cache(tmp)
        throughput(data, tmp, args.repeats)
        runs = time_to_99(data, tmp, args)
        where_time_goes(runs, data)
        print("\n(d) the default recipe for longer: test accuracy over the same seeds")
        for epochs in (2, 3):
            longer = [cnnkit_cli(data, tmp, seed, "--epochs", str(epochs))
                      for seed in range(args.seeds)]
            accs = [r["test_acc"] for r in longer]
            print(f"  --epochs {epochs}: mean {statistics.mean(accs):.4f} (min {min(accs):.4f}), "
                  f"median wall to the printed accuracy "
                  f"{statistics.median(r['at']['test'] for r in longer):.1f} s")


def throughput(data: Path, tmp: Path, repeats: int) -> None:
    same = dict(epochs=1, batch_size=64, optimizer="adam", lr=1e-3, momentum=0.9,
                schedule="constant", val_fraction=0.0, label_smoothing=0.0)
    rates = {"tutorial": [], "cnnkit fp32 NCHW": [], "cnnkit default": []}
    for i in range(repeats):
        rates["tutorial"].append(tutorial(1)["train_img_per_s"])
        rates["cnnkit fp32 NCHW"].append(cnnkit_run(
            data, tmp, f"a32-{i}", precision="fp32", channels_last=False, **same)["train_img_per_s"])
        rates["cnnkit default"].append(cnnkit_run(data, tmp, f"ad-{i}", **same)["train_img_per_s"])
    base = statistics.median(rates["tutorial"])
    print(f"\n(a) training images/s, LeNet, batch 64, Adam 1e-3 (median of {repeats} alternating "
          f"runs)")
    for name, values in rates.items():
        med = statistics.median(values)
        print(f"  {name:<18} {med:8.0f} img/s   ×{med / base:.2f}   runs: "
              + ", ".join(f"{v:.0f}" for v in values))


def time_to_99(data: Path, tmp: Path, args) -> list[dict]:
    """cnnkit's default recipe per seed, alternating with the tutorial's epochs 1, 2, ..."""
    print("\n(b) wall time from process start to the printed test accuracy, 99.0% target")
    runs, reached, tutorial_epochs = [], None, 0

    def next_tutorial():  # one more epoch than last time, until 99.0% or the cap
        nonlocal reached, tutorial_epochs
        tutorial_epochs += 1
        tut = tutorial(tutorial_epochs)
        print(f"  tutorial recipe, {tutorial_epochs} epoch(s): test accuracy "
              f"{tut['test_acc']:.4f}, {tut['wall_s']:.1f} s (its training loop "
              f"{tut['train_s']:.1f} s)")
        reached = tut if tut["test_acc"] >= 0.99 else None

    for seed in range(args.seeds):
        run = cnnkit_cli(data, tmp, seed)
        runs.append(run)
        print(f"  cnnkit default recipe, seed {seed}: {run['epochs']} epoch(s), test accuracy "
              f"{run['test_acc']:.4f}, {run['at']['test']:.2f} s (process exit "
              f"{run['exit_s']:.2f} s)")
        if reached is None and tutorial_epochs < args.max_tutorial_epochs:
            next_tutorial()
    while reached is None and tutorial_epochs < args.max_tutorial_epochs:
        next_tutorial()
    accs = [r["test_acc"] for r in runs]
    ours = statistics.median(r["at"]["test"] for r in runs)
    print(f"  cnnkit over {len(runs)} seeds: test accuracy mean {statistics.mean(accs):.4f} "
          f"(min {min(accs):.4f}, max {max(accs):.4f}); median wall {ours:.2f} s")
    if reached is None:
        print(f"  the tutorial did not reach 99.0% within {args.max_tutorial_epochs} epochs")
    else:
        print(f"  time to 99.0%: tutorial {reached['wall_s']:.1f} s vs cnnkit {ours:.2f} s: "
              f"cnnkit ×{reached['wall_s'] / ours:.1f} faster")
    return runs


def where_time_goes(runs: list[dict], data: Path) -> None:
    """Medians over the runs of (b): the spans between the moments their lines appeared."""
    def med(f) -> float:
        return statistics.median(f(r) for r in runs)
    spans = [
        ("start-up: interpreter, imports, command line", med(lambda r: r["at"]["threads"])),
        ("data, model, optimiser (its first use imports torch._dynamo)",
         med(lambda r: r["at"]["header"] - r["at"]["threads"])),
        ("the epoch: training steps", med(lambda r: r["epoch_s"])),
        ("validation, metrics, checkpoint",
         med(lambda r: r["last_epoch_at"] - r["at"]["header"] - r["epoch_s"])),
        ("test evaluation", med(lambda r: r["at"]["test"] - r["last_epoch_at"])),
        ("= printed test accuracy", med(lambda r: r["at"]["test"])),
        ("figures (after the result)", med(lambda r: r["at"]["result"] - r["at"]["test"])),
        ("interpreter exit", med(lambda r: r["exit_s"] - r["at"]["result"])),
    ]
    print("\n(c) where cnnkit's time goes (median over the runs of (b))")
    for name, seconds in spans:
        print(f"  {name:<62} {seconds:6.2f} s")
    print("  measured alone, as `python -c` minus a bare interpreter (median of 3):")
    for code in ("import torch", "import torch, cnnkit.train.classify",
                 "import torch; import torch._dynamo"):
        print(f"    {code:<40} {python_seconds(code):.2f} s")
    from cnnkit.data.formats import read_idx_pair  # noqa: PLC0415
    paths = [data / "mnist" / f"train-{kind}-idx{n}-ubyte.gz" for kind, n in (("images", 3),
                                                                                 ("labels", 1))]
    start = time.perf_counter()
    read_idx_pair(*paths)
    print(f"    decoding the MNIST training set from its gzip files: "
          f"{time.perf_counter() - start:.3f} s")


if __name__ == "__main__":
    main()
