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
