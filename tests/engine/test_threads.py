"""The default torch thread count (engine.device.choose_threads) and the run header line."""
import os
import subprocess
import sys
import time

import pytest
import torch

from cnnkit.engine import device
from cnnkit.engine.config import RunConfig
from cnnkit.engine.run import Run


@pytest.fixture
def no_omp(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)


def test_physical_cores_within_the_cpus_this_process_may_use():
    cores = device.physical_cores()
    assert 1 <= cores <= len(os.sched_getaffinity(0))


def test_requested_threads_win(no_omp):
    assert device.choose_threads(3) == (3, "--threads")


def test_omp_num_threads_is_respected(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    n, why = device.choose_threads(0)
    assert n == torch.get_num_threads() and "OMP_NUM_THREADS" in why


def test_tiny_inference_uses_one_thread(no_omp, monkeypatch):
    monkeypatch.setattr(device, "physical_cores", lambda: 8)
    monkeypatch.setattr(device, "busy_cores", lambda cores: (0.0, "idle"))
    small = device.SMALL_INFERENCE_MACS - 1
    assert device.choose_threads(training=False, work_macs=small)[0] == 1
    # the same work when training, or more inference work, gets every idle core
    assert device.choose_threads(training=True, work_macs=small)[0] == 8
    assert device.choose_threads(training=False, work_macs=100 * small)[0] == 8


def test_busy_cores_are_left_out_except_for_deterministic_runs(no_omp, monkeypatch):
    monkeypatch.setattr(device, "physical_cores", lambda: 4)
    monkeypatch.setattr(device, "busy_cores", lambda cores: (1.2, "1.2 busy with other work"))
    n, why = device.choose_threads()
    assert n == 3 and "1.2 busy with other work" in why  # round(4 − 1.2)
    monkeypatch.setattr(device, "busy_cores", lambda cores: (9.0, "9.0 busy"))
    assert device.choose_threads()[0] == 1  # never fewer than one
    assert device.choose_threads(deterministic=True)[0] == 4  # reruns must match bit for bit


def test_busy_cores_sees_work_running_now():
    """A real process spinning on one core counts as (about) one busy core, whatever the load
    average says; the measurement lasts its interval, not the average's minute."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)  # started and spinning
        busy, said = device.busy_cores(2, interval=0.2)
    finally:
        spinner.kill()
        spinner.wait()
    assert 0.8 <= busy <= 2.0 and said == f"{busy:.1f} busy with other work"


def test_run_header_says_threads_and_why(no_omp, tmp_path):
    before = torch.get_num_threads()
    lines = []
    try:
        with Run.open(RunConfig(out_dir=str(tmp_path), threads=1), task="classify", prefix="t",
                      log=lines.append, folder=False):
            assert torch.get_num_threads() == 1
        assert "threads: 1 (--threads)" in lines
        lines.clear()
        with Run.open(RunConfig(out_dir=str(tmp_path)), task="classify", prefix="t",
                      log=lines.append, folder=False):
            n = torch.get_num_threads()
        # the load average moves between calls: check the line states the count applied
        assert lines[0].startswith(f"threads: {n} (") and lines[0].endswith(")")
    finally:
        torch.set_num_threads(before)
