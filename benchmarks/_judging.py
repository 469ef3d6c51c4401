"""What the CycleGAN judging benchmarks share: where the data sets are, and their options."""
from __future__ import annotations

import argparse
from pathlib import Path

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def judging_parser(doc: str) -> argparse.ArgumentParser:
    """A parser described by the script's first paragraph, with --judge and --data-dir."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--judge", nargs="+", required=True, help="judge runs or .pt files")
    parser.add_argument("--data-dir", type=Path, default=DATASETS)
    return parser
