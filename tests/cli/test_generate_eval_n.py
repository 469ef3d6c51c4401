"""`cnnkit generate-eval` prints KID ± its standard error beside FID, n on every line, and
refuses too few images (20 noise images used to score "1.59x the floor", better than a GAN)."""
import re

import torch

from tests.cli._run import assert_one_line_error, cnnkit


def _noise(path, n):
    images = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(n))
    torch.save(images, path)
    return path


def test_too_few_images_are_refused(tmp_path, lenet_ckpt):
    proc = cnnkit("generate-eval", "--classifier", lenet_ckpt, "--samples",
                  _noise(tmp_path / "noise20.pt", 20), "--dataset", "digits")
    assert_one_line_error(proc, "n = 20", "noise20.pt", "at least 50")
    assert_one_line_error(cnnkit("generate-eval", "--classifier", lenet_ckpt, "--samples",
                                 tmp_path / "noise20.pt", "--n", "10"), "--n must be at least 50")


def test_kid_and_n_beside_fid(tmp_path, lenet_ckpt):
    proc = cnnkit("generate-eval", "--classifier", lenet_ckpt, "--samples",
                  _noise(tmp_path / "noise.pt", 120), "--dataset", "digits")
    assert proc.returncode == 0, proc.stderr
    assert "warning: n = 120 < 1000" in proc.stderr
    lines = {key: line for line in proc.stdout.splitlines()
             for key in ("floor", "samples vs", "ratio") if line.startswith(("FID " + key,
                                                                              "FID " + key[:5]))}
    assert set(lines) == {"floor", "samples vs", "ratio"}, proc.stdout
    kid = {}
    for key in ("floor", "samples vs"):
        assert "(n = 120)" in lines[key]
        match = re.search(r"KID (-?[0-9.]+) ± ([0-9.]+)", lines[key])
        assert match, lines[key]
        kid[key] = float(match.group(1)), float(match.group(2))
        assert kid[key][1] > 0
    assert "n = 120" in lines["ratio"]
    # noise is far from digits: many standard errors above the real-data floor
    assert kid["samples vs"][0] - kid["floor"][0] > 5 * kid["samples vs"][1]
