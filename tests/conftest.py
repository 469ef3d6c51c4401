"""Shared fixtures: paths to the real data in ../shared (never copied into the repo)."""
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
