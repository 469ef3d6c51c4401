"""Timing shared by the micro-benchmarks (run as scripts: `python benchmarks/NAME.py`)."""
from __future__ import annotations

import statistics
import time


def median_ms(steps, repeats: int, warmup: int = 5) -> list[float]:
    """Median wall time in ms of each step; the steps alternate run by run, so a busy shared
    machine slows both sides alike instead of whichever happened to run during the spike."""
    for _ in range(warmup):
        for step in steps:
            step()
    times = [[] for _ in steps]
    for _ in range(repeats):
        for step, record in zip(steps, times):
            start = time.perf_counter()
            step()
            record.append(time.perf_counter() - start)
    return [1000 * statistics.median(t) for t in times]


def pass_times(step, n: int) -> list[float]:
    """Seconds of each of n calls of step()."""
    out = []
    for _ in range(n):
        start = time.perf_counter()
        step()
        out.append(time.perf_counter() - start)
    return out


def cpu_name() -> str:
    """The processor's model name, as /proc/cpuinfo gives it."""
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or "unknown CPU"
