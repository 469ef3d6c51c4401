"""`cnnkit conv` prints the output-size formula ops.conv2d actually applied: with 'same' padding
and dilation 3 it used to print ⌊(512 + 2 − 6 − 1)/1⌋ + 1 = 508 rows for a 512-row output."""
import re

import pytest

from tests.cli._run import cnnkit
from tests.conftest import DATASETS

EM_IMAGE = DATASETS / "isbi2012-membrane" / "train" / "image" / "0.png"  # 512×512 grey
FORMULA = re.compile(r"output \((\d+), (\d+)\).*= ⌊\((\d+) \+ ([\d +]+) − (\d+) − 1\)/(\d+)⌋ \+ 1"
                     r" = (\d+) rows")


@pytest.mark.parametrize("kernel, flags", [
    ("sobel_x", ["--padding", "same", "--dilation", "3"]),  # 3×3: 3 rows above, 3 below
    ("two", ["--padding", "same", "--dilation", "3"]),  # 2×2: total 3, odd: 1 above, 2 below
    ("sobel_x", ["--padding", "2", "--stride", "3", "--dilation", "2"]),
    ("sobel_x", ["--padding", "valid", "--dilation", "5"]),
])
def test_printed_formula_is_the_one_applied(kernel, flags, tmp_path):
    if kernel == "two":
        kernel = tmp_path / "two.txt"
        kernel.write_text("1 1\n1 1\n")
    proc = cnnkit("conv", EM_IMAGE, "--kernel", kernel, *flags, "-o", tmp_path / "c.png")
    assert proc.returncode == 0, proc.stderr
    match = FORMULA.search(proc.stdout)
    assert match, proc.stdout
    out_rows, _, n, pads, span, stride, printed = match.groups()
    padding = sum(int(p) for p in pads.split("+"))
    # the printed numbers evaluate to the printed result, which is the produced height
    assert (int(n) + padding - int(span) - 1) // int(stride) + 1 == int(printed) == int(out_rows)
    k = 2 if "two" in str(kernel) else 3
    dilation = int(flags[flags.index("--dilation") + 1])
    assert int(span) == dilation * (k - 1)
    if "same" in flags:
        assert int(out_rows) == 512 and padding == dilation * (k - 1)
