"""`cnnkit lr-find` as a user runs it: a real PNG and CSV, the suggestion printed, clean errors."""
import csv

import pytest
from PIL import Image

from tests.cli._run import assert_one_line_error, cnnkit

QUICK = ["--model", "lenet", "--dataset", "digits", "--train-limit", "640", "--threads", "1",
         "--quiet"]


def test_lr_find_writes_plot_and_csv_and_prints_suggestion(tmp_path):
    out = tmp_path / "plots" / "lr.png"
    proc = cnnkit("lr-find", *QUICK, "--num-steps", "40", "--start-lr", "1e-6", "--end-lr", "1",
                  "-o", out)
    assert proc.returncode == 0, proc.stderr
    with Image.open(out) as image:
        image.load()  # decodes the whole PNG: a truncated file raises
        assert image.format == "PNG" and image.width > 300
        assert image.text["Title"].startswith("lr range test: suggested lr")
    lines = proc.stdout.splitlines()
    suggested = [line for line in lines if line.startswith("suggested lr: ")]
    assert len(suggested) == 1 and "(rule: steepest descent" in suggested[0]
    assert any(line.startswith("other rules: minimum of the smoothed loss") for line in lines)
    rows = list(csv.DictReader(out.with_suffix(".csv").open()))
    assert rows[0]["lr"] == repr(1e-6) and 10 < len(rows) <= 40
    table_rows = [line for line in lines if line[:5].strip().isdigit()]
    assert 4 <= len(table_rows) <= 12  # about every 10th point, not all 40
    value = float(suggested[0].split()[2])
    assert 1e-6 < value < 1.0


@pytest.mark.parametrize("args, fragments", [
    (["--start-lr", "1", "--end-lr", "0.1"], ["--start-lr", "--end-lr"]),
    (["--num-steps", "5"], ["--num-steps", "at least 10"]),
    (["--model", "lenett"], ["unknown model 'lenett'", "lenet"]),
])
def test_bad_input_is_one_line_exit_2(tmp_path, args, fragments):
    proc = cnnkit("lr-find", *QUICK, *args, "-o", tmp_path / "x.png")
    assert_one_line_error(proc, "cnnkit lr-find: error:", *fragments)
    assert not (tmp_path / "x.png").exists()
