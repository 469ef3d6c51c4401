"""End to end through real `cnnkit` subprocesses: gan train → gan sample → generate-eval."""
import re

import numpy as np
import pytest
import torch
from PIL import Image

from tests.cli._run import assert_one_line_error, cnnkit


def _not_blank(path) -> bool:
    pixels = np.asarray(Image.open(path).convert("L"), dtype=np.float64)
    return pixels.std() > 5


def test_gan_train_sample_and_generate_eval(tmp_path, lenet_ckpt):
    proc = cnnkit("gan", "train", "--dataset", "digits", "--epochs", "1", "--quiet",
                  "--class-conditional", "--ngf", "16", "--ndf", "16", "--name", "run",
                  "--out-dir", tmp_path, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    run = tmp_path / "run"
    assert _not_blank(run / "samples_epoch001.png") and _not_blank(run / "losses.png")

    proc = cnnkit("gan", "sample", run, "--n", "60", "-o", tmp_path / "grid.png", "--save",
                  tmp_path / "s.pt", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert _not_blank(tmp_path / "grid.png")
    saved = torch.load(tmp_path / "s.pt", weights_only=True)
    assert saved["images"].dtype == torch.uint8 and saved["images"].shape == (60, 1, 28, 28)
    assert saved["labels"].tolist() == [i % 10 for i in range(60)]

    proc = cnnkit("generate-eval", "--classifier", lenet_ckpt, "--samples", tmp_path / "s.pt",
                  "--dataset", "digits", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    numbers = {key: float(m.group(1)) for key in ("floor", "samples vs", "ratio",
                                                  "conditional accuracy")
               for m in [re.search(key + r"[^:]*: ([0-9.]+)", proc.stdout)] if m}
    assert len(numbers) == 4, proc.stdout
    assert numbers["ratio"] == pytest.approx(numbers["samples vs"] / numbers["floor"], abs=0.01)
    assert 0.0 <= numbers["conditional accuracy"] <= 1.0

    # bad input: one line on stderr, exit code 2
    assert_one_line_error(cnnkit("gan", "sample", run, "--class", "12", "-o", tmp_path / "x.png"),
                          "--class must be in 0..9")
    bad = tmp_path / "bad.pt"
    torch.save(torch.rand(4, 1, 28, 28), bad)  # floats, not uint8 images
    assert_one_line_error(cnnkit("generate-eval", "--classifier", lenet_ckpt, "--samples", bad),
                          "uint8")
