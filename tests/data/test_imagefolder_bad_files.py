"""One unreadable file in an image folder: skipped with one warning line (training reports the
count), or, with strict / --strict, a one-line error. Real CIFAR JPEGs plus a text file named
.png and a real JPEG cut in half; the CLI checks run the real `cnnkit` in a subprocess."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml

from cnnkit.data import load_dataset
from cnnkit.data.imagefolder import ImageFolderDataset
from cnnkit.data.loader import StreamingLoader
from cnnkit.utils import CnnkitError
from tests.cli._run import assert_one_line_error, cnnkit
from tests.data.conftest import unzip_cifar_test

CLASSES = ["bird", "cat", "ship"]
PER_CLASS = 10


def _add_bad_files(root: Path) -> dict[str, Path]:
    """A text file named .png and a real JPEG cut short, in two class folders."""
    text = root / "cat" / "notes.png"
    text.write_text("not an image, whatever the name says\n")
    whole = sorted((root / "bird").glob("*.jpg"))[0].read_bytes()
    cut = root / "ship" / "cut.jpg"
    start_of_scan = whole.index(b"\xff\xda")  # JPEG's SOS marker: the header ends there
    cut.write_bytes(whole[: start_of_scan + 40])  # a whole header, then the data stops
    return {"text": text, "cut": cut}


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "imgs"
    unzip_cifar_test(root, PER_CLASS, CLASSES)
    return root, _add_bad_files(root)


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if "unreadable" in line]


def test_in_memory_load_skips_unreadable_files_with_one_warning(folder, capsys):
    root, bad = folder
    train = load_dataset("imagefolder", "train", data_dir=root, quiet=True)
    train_err = capsys.readouterr().err
    test = load_dataset("imagefolder", "test", data_dir=root, quiet=True)
    test_err = capsys.readouterr().err
    # Every good image is in one split, no bad one in either.
    assert len(train) + len(test) == len(CLASSES) * PER_CLASS
    skipped = {p.name for p in train.skipped} | {p.name for p in test.skipped}
    assert skipped == {bad["text"].name, bad["cut"].name}
    # Each split with a bad file says so in exactly one line naming its files.
    for err, ds in ((train_err, train), (test_err, test)):
        lines = _warnings(err)
        assert len(lines) == (1 if ds.skipped else 0), err
        for path in ds.skipped:
            assert path.name in lines[0]


def test_skipping_leaves_the_automatic_split_as_it_was(folder, tmp_path):
    # The 80/20 split is drawn over every file, bad ones included, so fixing or removing a bad
    # file never moves good images between train and test.
    root, bad = folder
    clean = tmp_path / "clean"
    shutil.copytree(root, clean)
    for path in bad.values():
        (clean / path.relative_to(root)).write_bytes(
            sorted((root / "bird").glob("*.jpg"))[1].read_bytes())  # now readable
    with_bad = ImageFolderDataset(root, "test")
    fixed = ImageFolderDataset(clean, "test")
    kept = [p.relative_to(root) for p in with_bad.files]
    assert kept == [p.relative_to(clean) for p in fixed.files
                    if p.name not in {b.name for b in with_bad.skipped}]


def test_strict_stops_at_the_first_unreadable_file(folder):
    root, bad = folder
    with pytest.raises(CnnkitError, match=r"cannot decode image .*(notes\.png|cut\.jpg)"):
        for split in ("train", "test"):
            load_dataset("imagefolder", split, data_dir=root, quiet=True, strict=True)


def test_stream_drops_a_file_that_fails_mid_epoch(folder, capsys):
    # A cut JPEG passes the header check and fails only when decoded, in a worker process.
    root, bad = folder
    bad["text"].unlink()
    ds = ImageFolderDataset(root, "train")
    ds = ds if bad["cut"] in ds.files else ImageFolderDataset(root, "test")
    assert bad["cut"] in ds.files and not ds.skipped
    capsys.readouterr()
    count = len(ds.files)
    loader = StreamingLoader(ds, 4, shuffle=False, num_workers=1)
    seen = sum(len(y) for _, y in loader)
    # An evaluation pass forgets the file: the set's length is then what was evaluated.
    assert seen == count - 1 and len(ds) == count - 1 and bad["cut"] not in ds.files
    lines = _warnings(capsys.readouterr().err)
    assert len(lines) == 1 and "cut.jpg" in lines[0], lines
    assert sum(len(y) for _, y in loader) == seen  # a second epoch: the same, warned once
    assert _warnings(capsys.readouterr().err) == []
    # A training loader drops it from its batch but keeps its length (the epoch's shape).
    train_like = StreamingLoader(ds_with_cut := _with(ds, bad["cut"]), 2, shuffle=True,
                                 drop_last=True, num_workers=1)
    assert sum(len(y) for _, y in train_like) == 2 * len(train_like) - 1
    assert len(ds_with_cut) == count
    ds_with_cut.strict = True  # --strict: the worker's failure is one line, in this process
    with pytest.raises(CnnkitError, match=r"^cannot decode image \S*cut\.jpg[^\n]*$"):
        list(StreamingLoader(ds_with_cut, 4, shuffle=False, num_workers=1))


def _with(ds, path):
    """A subset of `ds` whose files include `path` again (its label: the ship class)."""
    part = ds.subset(torch.arange(len(ds)))
    part.files = [*part.files, path]
    part.labels = torch.cat([part.labels, torch.tensor([CLASSES.index("ship")])])
    return part


def _train(root, cwd, name, *extra):
    return cnnkit("train", "--dataset", "imagefolder", "--data-dir", root, "--model", "lenet",
                  "--epochs", "1", "--batch-size", "8", "--quiet", "--no-tensorboard",
                  "--name", name, *extra, cwd=cwd)


def test_train_cli_skips_and_reports_then_eval_from_another_folder(folder, tmp_path):
    root, bad = folder
    # A relative --data-dir: eval from another folder must still find the images.
    proc = _train(Path("imgs"), tmp_path, "skip")
    assert proc.returncode == 0, proc.stderr
    lines = _warnings(proc.stderr)
    assert 1 <= len(lines) <= 2 and all(n in proc.stderr for n in ("notes.png", "cut.jpg"))
    header = next(line for line in proc.stdout.splitlines() if "parameters" in line)
    assert "2 unreadable skipped" in header, header
    saved = yaml.safe_load((tmp_path / "runs" / "skip" / "config.yaml").read_text())
    assert saved["data_dir"] == str(root.resolve())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = cnnkit("eval", tmp_path / "runs" / "skip", cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr
    readable_test = len(load_dataset("imagefolder", "test", data_dir=root, quiet=True))
    assert f"({readable_test} images)" in proc.stdout, proc.stdout


def test_train_cli_strict_and_stream_fail_in_one_line_without_a_run_folder(folder, tmp_path):
    root, bad = folder
    proc = _train(root, tmp_path, "strict", "--strict")
    assert_one_line_error(proc, "cannot decode image", "notes.png")
    assert not (tmp_path / "runs" / "strict").exists()
    bad["text"].unlink()  # only the cut JPEG: it fails inside the --stream workers
    proc = _train(root, tmp_path, "strict", "--strict", "--stream", "--workers", "1")
    assert_one_line_error(proc, "cannot decode image", "cut.jpg")
    assert not (tmp_path / "runs" / "strict").exists() or \
        any((tmp_path / "runs" / "strict").glob("*.pt"))
    proc = _train(root, tmp_path, "stream", "--stream", "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    assert len(_warnings(proc.stderr)) == 1 and "cut.jpg" in proc.stderr
