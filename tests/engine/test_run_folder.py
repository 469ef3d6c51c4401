"""The run folder of a run that fails: removed when it holds no checkpoint (so the same --name
is free again), kept whenever it does; and the data folder saved in config.yaml is absolute."""
import pytest
import torch
import yaml

from cnnkit.engine.checkpoint import save_checkpoint
from cnnkit.engine.run import Run
from cnnkit.train import TrainConfig
from cnnkit.utils import CnnkitError
from tests.cli._run import assert_one_line_error, cnnkit

QUIET = dict(log=lambda *_: None)


def _config(tmp_path, **kw):
    return TrainConfig(dataset="digits", out_dir=str(tmp_path / "runs"), name="r",
                       tensorboard=False, **kw)


def test_failure_before_the_first_checkpoint_removes_the_folder(tmp_path):
    with pytest.raises(CnnkitError, match="boom"):
        with Run.open(_config(tmp_path), task="classify", prefix="t", **QUIET) as run:
            assert (run.dir / "config.yaml").is_file()
            raise CnnkitError("boom")
    assert not (tmp_path / "runs" / "r").exists()
    with Run.open(_config(tmp_path), task="classify", prefix="t", **QUIET) as run:  # name free
        assert run.dir == tmp_path / "runs" / "r"


def test_failure_after_a_checkpoint_keeps_everything(tmp_path):
    with pytest.raises(CnnkitError, match="boom"):
        with Run.open(_config(tmp_path), task="classify", prefix="t", **QUIET) as run:
            save_checkpoint(run.dir / "last.pt", {"models": {"m": torch.nn.Linear(2, 2)
                                                             .state_dict()}})
            raise CnnkitError("boom")
    assert sorted(p.name for p in (tmp_path / "runs" / "r").iterdir()) == ["config.yaml",
                                                                           "last.pt"]


def test_files_the_run_did_not_write_are_never_removed(tmp_path):
    folder = tmp_path / "runs" / "r"
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("the user's")
    with pytest.raises(KeyboardInterrupt):
        with Run.open(_config(tmp_path), task="classify", prefix="t", **QUIET):
            raise KeyboardInterrupt
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]


def test_data_dir_is_saved_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with Run.open(_config(tmp_path, data_dir="my/images"), task="classify", prefix="t",
                  **QUIET) as run:
        assert run.config.data_dir == str(tmp_path.resolve() / "my" / "images")
    saved = yaml.safe_load((tmp_path / "runs" / "r" / "config.yaml").read_text())
    assert saved["data_dir"] == str(tmp_path.resolve() / "my" / "images")


def test_cli_run_that_fails_leaves_no_folder_and_the_name_works_again(tmp_path):
    args = ["train", "--train-limit", "40", "--test-limit", "20", "--batch-size", "8",
            "--epochs", "1", "--quiet", "--threads", "1", "--no-tensorboard", "--out-dir",
            tmp_path, "--name", "again"]
    # The data are read after the run folder is made: the folder must go with the failure.
    missing = tmp_path / "no_such_folder"
    assert_one_line_error(cnnkit(*args, "--dataset", "imagefolder", "--data-dir", missing),
                          str(missing), "does not exist")
    assert not (tmp_path / "again").exists()
    proc = cnnkit(*args, "--dataset", "digits")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "again" / "last.pt").is_file()


def test_a_data_set_given_as_format_and_path_names_one_folder(tmp_path):
    from cnnkit.engine.checkpoint import new_run_dir
    run = new_run_dir(tmp_path, None, "yolov8n-yolo:/data/my set/")
    assert run.parent == tmp_path and run.name.startswith("yolov8n-yolo_data_my set-")
