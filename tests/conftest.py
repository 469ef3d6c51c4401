"""Shared fixtures: paths to the real data in ../shared (never copied into the repo)."""
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DATASETS = SHARED / "datasets"
REFERENCE = SHARED / "reference"


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    path = DATASETS / "mnist"
    assert (path / "train-images-idx3-ubyte.gz").is_file(), f"real MNIST expected in {path}"
    return path


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of many small per-image ops: on two busy cores, two
    threads wait on each other at every op (up to 10x slower); one runs in steady time."""
    import torch  # noqa: PLC0415
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_configure(config):
    """Under `pytest -n N` the cores are shared: each worker takes its share of intra-op
    threads, because N workers of all-core torch oversubscribe and wait on each other."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch  # noqa: PLC0415
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
