"""torch intra-op threads: 1 vs N on LeNet/MNIST training steps and on small-batch inference.

    python benchmarks/threads.py [--rounds 3] [--threads 1 2]

Each (workload, threads) cell runs in its own process (a fresh OpenMP pool, nothing else
changed), the cells alternate round by round so a busy machine slows every side alike, and the
table prints the median ms per call and its ratio to 1 thread. The load average is printed
beside it: on a machine shared with other work, threads that wait on each other at every op
are what makes N threads slower than 1. `cnnkit.engine.device.choose_threads` states the rule
these numbers gave.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "datasets" / "mnist"
# workload → (model, keywords, batch, input size, training?)
WORKLOADS = {
    "lenet train b64": ("lenet", {}, 64, (1, 28, 28), True),
    "lenet infer b1": ("lenet", {}, 1, (1, 28, 28), False),
    "lenet infer b256": ("lenet", {}, 256, (1, 28, 28), False),
    "resnet18 infer b1": ("resnet18", {"small_input": True, "num_classes": 10}, 1, (3, 32, 32),
                          False),
    "resnet18 infer b16": ("resnet18", {"small_input": True, "num_classes": 10}, 16, (3, 32, 32),
                           False),
}


def worker(threads: int, workload: str, seconds: float) -> None:
    """One cell: ms per call, median over `seconds` of calls, printed as JSON."""
    import torch  # noqa: PLC0415

    from cnnkit.models import create_model  # noqa: PLC0415
    from cnnkit.models._summary import count_macs  # noqa: PLC0415

    torch.set_num_threads(threads)
    name, kwargs, batch, size, training = WORKLOADS[workload]
    torch.manual_seed(0)
    model = create_model(name, **kwargs)
    macs = count_macs(model, size)
    x = torch.randn(batch, *size)
    if name == "lenet" and (MNIST / "train-images-idx3-ubyte.gz").is_file():
        from cnnkit.data import load_dataset  # noqa: PLC0415  real digits where they are
        data = load_dataset("mnist", "train", data_dir=MNIST.parent, download=False,
                            quiet=True)
        x = (data.images[:batch].float() / 255 - 0.1307) / 0.3081
    y = torch.randint(0, 10, (batch,))
    if training:
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

        def call():
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    else:
        model.eval()

        def call():
            with torch.inference_mode():
                model(x)
    for _ in range(3):
        call()
    times, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 5:
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    print(json.dumps({"ms": 1000 * statistics.median(times), "macs": macs * batch,
                      "calls": len(times)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=1.5, help="timed seconds per cell")
    parser.add_argument("--workloads", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS))
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    results: dict[tuple[str, int], list[float]] = {}
    macs = {}
    loads = []
    for _ in range(args.rounds):
        for workload in args.workloads:
            for threads in args.threads:
                loads.append(os.getloadavg()[0])
                out = subprocess.run([sys.executable, __file__, "--worker", str(threads), workload,
                                      str(args.seconds)], capture_output=True, text=True,
                                     check=True, env=env, cwd=ROOT).stdout
                cell = json.loads(out.strip().splitlines()[-1])
                results.setdefault((workload, threads), []).append(cell["ms"])
                macs[workload] = cell["macs"]
    print(f"{os.cpu_count()} logical CPUs | load average during the run: "
          f"{min(loads):.1f}–{max(loads):.1f} | median of {args.rounds} rounds")
    head = "".join(f"{f'{t} thr ms':>11}" for t in args.threads)
    ratios = "".join(f"{f'{t}/1':>8}" for t in args.threads[1:])
    print(f"{'workload':<20}{'MMACs/call':>11}{head}{ratios}")
    for workload in args.workloads:
        ms = [statistics.median(results[(workload, t)]) for t in args.threads]
        cells = "".join(f"{m:11.3f}" for m in ms)
        rel = "".join(f"{m / ms[0]:8.2f}" for m in ms[1:])
        print(f"{workload:<20}{macs[workload] / 1e6:11.1f}{cells}{rel}")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--worker":
        worker(int(sys.argv[2]), sys.argv[3], float(sys.argv[4]))
    else:
        main()
