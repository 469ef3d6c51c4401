"""Start-up time of the `cnnkit` command: help and the model table must not wait for torch.

    python benchmarks/cli_startup.py [--runs 5]

Runs each command line in a fresh interpreter (as a user would) several times and prints the
median and the slowest wall time, against the 0.5 s target for everything but `train --help`
(its flags come from TrainConfig, whose module imports the data package and with it torch).
`python -c pass` is the baseline: the interpreter's own start.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = [["-c", "pass"], ["-m", "cnnkit", "--help"], ["-m", "cnnkit"],
            ["-m", "cnnkit", "--version"], ["-m", "cnnkit", "models"],
            ["-m", "cnnkit", "train", "--help"]]
TARGET_S = 0.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    times: dict[str, list[float]] = {" ".join(c): [] for c in COMMANDS}
    for _ in range(args.runs):  # alternate commands run by run: a busy machine slows each alike
        for command in COMMANDS:
            start = time.perf_counter()
            subprocess.run([sys.executable, *command], check=True, capture_output=True)
            times[" ".join(command)].append(time.perf_counter() - start)
    print(f"{'command':<32} {'median s':>9} {'max s':>7}  target")
    for name, seconds in times.items():
        shown = name.replace("-m cnnkit", "cnnkit") if name != "-c pass" else "python -c pass"
        target = "-" if "train" in name or name == "-c pass" else (
            "ok" if statistics.median(seconds) < TARGET_S else f"over {TARGET_S} s")
        print(f"{shown:<32} {statistics.median(seconds):9.3f} {max(seconds):7.3f}  {target}")


if __name__ == "__main__":
    main()
