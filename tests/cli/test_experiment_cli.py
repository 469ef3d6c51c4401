"""`cnnkit experiment schemes` as a user runs it: a tiny real run on the embedded digits."""
import re

import numpy as np
import pytest

from cnnkit.train.experiment import VARIANTS, read_csv
from tests.cli._run import assert_one_line_error, cnnkit


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("experiment")
    proc = cnnkit("experiment", "schemes", "--dataset", "digits", "--seeds", "2", "--epochs", "2",
                  "--train-limit", "300", "--threads", "1", "--quiet", "--out-dir", out,
                  "--name", "cli")
    assert proc.returncode == 0, proc.stderr
    return proc, out / "cli"


def test_writes_the_experiment_folder(tiny_run):
    proc, exp_dir = tiny_run
    for name in ("schemes.csv", "schemes.png", "summary.md"):
        assert (exp_dir / name).is_file() and f"wrote {exp_dir / name}" in proc.stdout
    rows = read_csv(exp_dir / "schemes.csv")
    assert len(rows) == 6 and {r["seed"] for r in rows} == {0, 1}
    assert len(list((exp_dir / "runs").glob("*/last.pt"))) == 6
    assert proc.stdout.count("] simple_cnn_") == 6  # one progress line per run, even --quiet
    assert "train_loss" not in proc.stdout  # --quiet: no epoch tables


def test_printed_table_matches_the_csv(tiny_run):
    proc, exp_dir = tiny_run
    rows = read_csv(exp_dir / "schemes.csv")
    for variant in VARIANTS:
        accs = np.array([r["test_acc"] for r in rows if r["variant"] == variant])
        peaks = np.array([r["peak_epoch"] for r in rows if r["variant"] == variant])
        line = next(line for line in proc.stdout.splitlines() if line.startswith(f"| {variant} "))
        assert f"{100 * accs.mean():.2f}% ± {100 * accs.std(ddof=1):.2f}" in line
        assert f"{peaks.mean():.1f} ± {peaks.std(ddof=1):.1f}" in line


def test_prints_p_values_and_a_verdict(tiny_run):
    proc, _ = tiny_run
    p_values = [float(p) for p in re.findall(r"t-test .*: t = \S+, p = ([0-9.]+)", proc.stdout)]
    assert len(p_values) == 2  # paired and Welch
    assert all(0.0 <= p <= 1.0 for p in p_values)
    assert re.search(r"(No significant difference|Significant at) .*α = 0\.05", proc.stdout)


def test_bad_value_is_a_one_line_error(tmp_path):
    assert_one_line_error(cnnkit("experiment", "schemes", "--seeds", "1", "--out-dir", tmp_path),
                          "--seeds must be at least 2")
    assert not any(tmp_path.iterdir())
