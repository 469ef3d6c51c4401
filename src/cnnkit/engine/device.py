"""Device and precision, resolved in one place for every task.

`--device auto` is CUDA when a GPU is visible, else the CPU. `--precision auto` is measured-fast
bf16 where the hardware computes it natively (CPUs with AMX or AVX512-BF16; GPUs with bf16
support), fp16 on older GPUs (with a GradScaler in the run engine), and fp32 elsewhere.
`choose_threads` picks torch's CPU threads (the rule and its measurements are in its docstring).
"""
from __future__ import annotations

import os
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from cnnkit.utils import CnnkitError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# Inference work per call below which one thread is used: ~4 LeNet images. Splitting ops this
# small across threads costs more in synchronisation than it saves (benchmarks/threads.py:
# LeNet batch 1, 2.3 M multiply-adds, was no faster on 2 threads than on 1, measured on a
# machine loaded by other work; an idle machine was not available to measure).
SMALL_INFERENCE_MACS = 10_000_000


def native_bf16() -> bool:
    """True on CPUs with AMX or AVX512-BF16, where bf16 autocast is faster than fp32."""
    try:
        return torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()
    except AttributeError:  # private helpers: absent on other builds means "don't know"
        return False


# --- CPU threads ---

def physical_cores() -> int:
    """Physical cores this process may run on: hyperthread siblings count once (two threads on
    one core share its arithmetic units, so the second adds contention, not speed)."""
    try:
        cpus = os.sched_getaffinity(0)
    except AttributeError:  # not Linux
        return max(1, (os.cpu_count() or 2) // 2)
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((topology / "physical_package_id").read_text().strip(),
                       (topology / "core_id").read_text().strip()))
        except OSError:  # no sysfs (a container may hide it): count the CPU itself
            cores.add(("cpu", str(cpu)))
    return max(1, len(cores))


def choose_threads(requested: int = 0, *, training: bool = True, work_macs: int | None = None,
                   deterministic: bool = False) -> tuple[int, str]:
    """(torch intra-op threads, why) for a process about to train or run inference.

    The rule, from benchmarks/threads.py on a 2-core machine shared with other work (load
    average 2–5), where 2 threads against 1 were 11× slower on LeNet/MNIST training steps,
    2.6–6.4× slower on LeNet batch-256 and ResNet-18 inference, and equal on LeNet batch 1:
    threads that synchronise at every op stall whenever the OS runs someone else on one of
    their cores. So:
      1. `--threads N` (requested > 0), or $OMP_NUM_THREADS when set, wins;
      2. inference of fewer than SMALL_INFERENCE_MACS multiply-adds per call: 1 thread;
      3. otherwise the physical cores not already busy: cores − `busy_cores()` (the other work
         running now), rounded, at least 1 — all of them on an idle machine (where more threads
         do pay off for real work), fewer when other processes already run. `deterministic`
         runs skip the busy term, so that a rerun uses the same threads and computes
         bit-identically.
    """
    if requested > 0:
        return requested, "--threads"
    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads(), "$OMP_NUM_THREADS"
    cores = physical_cores()
    if not training and work_macs is not None and work_macs < SMALL_INFERENCE_MACS:
        return 1, (f"{work_macs / 1e6:.1f} M multiply-adds per call: too little work to split "
                   f"across threads")
    if deterministic:
        return cores, f"{cores} physical core{'s' * (cores != 1)}"
    busy, said = busy_cores(cores)
    free = max(1, min(cores, round(cores - busy)))
    if free == cores:
        return cores, f"{cores} physical core{'s' * (cores != 1)}, {said}"
    return free, (f"{cores} physical cores, {said}: threads waiting on busy cores are slower "
                  f"than fewer; --threads or $OMP_NUM_THREADS overrides")


def busy_cores(cores: int, interval: float = 0.05) -> tuple[float, str]:
    """(how many of `cores` other work keeps busy now, that number in words).

    Linux: the machine's non-idle share of CPU time over `interval` seconds (/proc/stat, read
    twice; this process sleeps meanwhile), times `cores`. Not the load average: its 1-minute
    decay still counts, a minute later, a job that has just ended (a training run started right
    after another got one thread of two, at half speed). Elsewhere: the 1-minute load average.
    """
    def cpu_times() -> tuple[int, int]:  # (all jiffies, idle + iowait jiffies)
        with open("/proc/stat", encoding="ascii") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        return sum(values[:8]), values[3] + values[4]  # user..steal; guests are inside user
    try:
        total0, idle0 = cpu_times()
        time.sleep(interval)
        total1, idle1 = cpu_times()
    except (OSError, ValueError, IndexError):
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        return load, f"load average {load:.1f}"
    busy = cores * (1 - (idle1 - idle0) / max(1, total1 - total0))
    return busy, f"{busy:.1f} busy with other work"


def set_threads(requested: int = 0, **kwargs) -> str:
    """Apply `choose_threads` and return the line that says it: "threads: N (why)"."""
    n, why = choose_threads(requested, **kwargs)
    if n != torch.get_num_threads():
        torch.set_num_threads(n)
    return f"threads: {n} ({why})"


def resolve_device(name: str = "auto", local_rank: int | None = None) -> torch.device:
    """torch.device for `--device auto|cpu|cuda`; under torchrun each rank takes its local GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if not name.startswith("cuda"):
        raise CnnkitError(f"unknown device '{name}'; choose auto, cpu or cuda")
    if not torch.cuda.is_available():
        raise CnnkitError("--device cuda, but torch sees no CUDA device; use --device cpu (or "
                          "auto)")
    if local_rank is None:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(name if ":" in name else f"cuda:{local_rank}")
    torch.cuda.set_device(device)
    return device


def resolve_precision(precision: str, device: torch.device) -> str:
    """'fp32', 'bf16' or 'fp16' for `--precision` on `device`."""
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if native_bf16() else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise CnnkitError("--precision fp16 is for CUDA (it needs loss scaling and gains nothing "
                          "on a CPU); use bf16 or fp32")
    if precision not in ("fp32", "bf16", "fp16"):
        raise CnnkitError(f"unknown precision '{precision}'; choose auto, fp32, bf16 or fp16")
    return precision


def autocast(precision: str, device_type: str = "cpu"):
    """torch.autocast for bf16/fp16 on the device's type; fp32 is a no-op."""
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device_type, dtype=DTYPES[precision])


def to_device(batch, device: torch.device):
    """A batch (tensor, or tuple/list/dict of them) on `device`; CPU batches pass untouched."""
    if device.type == "cpu":
        return batch
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch
