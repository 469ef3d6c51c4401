"""`cnnkit predict` on a batch holding one bad file: the bad file is reported on stderr, every
other image is still predicted, and the command exits 2 at the end. Real checkpoints trained by
the real `cnnkit train` (a classifier on digits, a tiny U-Net on ISBI 2012), real image files."""
import numpy as np
import pytest
from PIL import Image

from tests.cli._run import cnnkit
from tests.conftest import DATASETS

ISBI = DATASETS / "isbi2012-membrane"


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    out = tmp_path_factory.mktemp("cls")
    proc = cnnkit("train", "--dataset", "digits", "--batch-size", "64", "--epochs", "1",
                  "--train-limit", "300", "--test-limit", "50", "--quiet", "--threads", "1",
                  "--no-tensorboard", "--out-dir", out, "--name", "c")
    assert proc.returncode == 0, proc.stderr
    return out / "c"


def _batch(folder):
    """Two real images (a grey bar and a grey ISBI crop) around a text file named .png and a
    PNG cut short."""
    folder.mkdir(exist_ok=True)
    bar = np.zeros((40, 30), np.uint8)
    bar[8:32, 13:17] = 255
    first, last = folder / "bar.png", folder / "cell.png"
    Image.fromarray(bar).save(first)
    Image.open(ISBI / "test" / "3.png").crop((0, 0, 96, 80)).save(last)
    text = folder / "notes.png"
    text.write_text("not an image\n")
    cut = folder / "cut.png"
    cut.write_bytes(last.read_bytes()[:200])  # the header survives, the pixel data does not
    return [first, text, cut, last], [text, cut]


def _check_reported(proc, bad):
    assert proc.returncode == 2, proc.stderr
    errors = proc.stderr.strip().splitlines()
    assert len(errors) == len(bad), proc.stderr  # one line per bad file, no traceback
    for line, path in zip(errors, bad):
        assert str(path) in line and "cannot decode image" in line


def test_classifier_predicts_the_good_images_and_exits_2(classifier, tmp_path):
    paths, bad = _batch(tmp_path)
    proc = cnnkit("predict", classifier, *paths, "--topk", "2", "--precision", "fp32")
    _check_reported(proc, bad)
    printed = proc.stdout.splitlines()
    good = [p for p in paths if p not in bad]
    assert [line for line in printed if line.endswith(".png")] == [str(p) for p in good]
    assert proc.stdout.count("%") == 2 * len(good)
    # The good images get the same answer as when predicted on their own.
    alone = cnnkit("predict", classifier, *good, "--topk", "2", "--precision", "fp32")
    assert alone.returncode == 0, alone.stderr
    assert alone.stdout.splitlines()[1:] == printed[1:]


def test_only_bad_files_is_exit_2_with_nothing_predicted(classifier, tmp_path):
    paths, bad = _batch(tmp_path)
    proc = cnnkit("predict", classifier, *bad)
    _check_reported(proc, bad)
    assert "%" not in proc.stdout


def test_segmentation_writes_masks_for_the_good_images(tmp_path):
    out = tmp_path / "runs"
    proc = cnnkit("train", "--model", "unet_small", "--model-args", "base_channels=4",
                  "--dataset", "isbi2012", "--data-dir", DATASETS, "--train-limit", "4",
                  "--test-limit", "1", "--crop-size", "32", "--batch-size", "2", "--epochs", "1",
                  "--quiet", "--threads", "1", "--no-tensorboard", "--out-dir", out,
                  "--name", "u")
    assert proc.returncode == 0, proc.stderr
    paths, bad = _batch(tmp_path / "images")
    proc = cnnkit("predict", out / "u", *paths, "--out-dir", tmp_path / "masks")
    _check_reported(proc, bad)
    written = sorted(p.name for p in (tmp_path / "masks").iterdir())
    assert written == ["bar_mask.png", "bar_overlay.png", "cell_mask.png", "cell_overlay.png"]
    assert np.asarray(Image.open(tmp_path / "masks" / "cell_mask.png")).shape == (80, 96)
