"""Gradient accumulation and the --max-epochs / --max-time limits, on the embedded digits set.

Oracles: accumulating N batches of B equals one batch of N·B (the same samples, a mean loss);
a run stopped by a limit and resumed ends bit-identical to the uninterrupted run.
"""
import pytest
import torch

from cnnkit.train import TrainConfig, train
from cnnkit.utils import CnnkitError
from tests.cli._run import cnnkit

QUIET = dict(log=lambda *_: None)
BASE = dict(dataset="digits", train_limit=512, val_fraction=0.0, epochs=2, quiet=True,
            threads=1, deterministic=True, precision="fp32")


def config(tmp_path, name, **overrides) -> TrainConfig:
    return TrainConfig(**{**BASE, "out_dir": str(tmp_path), "name": name, **overrides})


def weights(path) -> dict:
    return torch.load(path, weights_only=True)["models"]["model"]


def test_accumulating_two_batches_equals_one_double_batch(tmp_path):
    plain = dict(optimizer="sgd", lr=0.05, momentum=0.9, schedule="constant", translate=0)
    double = train(config(tmp_path, "double", batch_size=32, **plain), **QUIET)
    accumulated = train(config(tmp_path, "acc", batch_size=16, accumulate=2, **plain), **QUIET)
    got, expected = weights(accumulated.run_dir / "last.pt"), weights(double.run_dir / "last.pt")
    assert double.history[-1]["train_loss"] < double.history[0]["train_loss"]  # it learned
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-4, atol=1e-5)
    assert accumulated.history[-1]["train_loss"] == pytest.approx(
        double.history[-1]["train_loss"], rel=1e-4)
    steps = torch.load(accumulated.run_dir / "last.pt", weights_only=True)["position"]["step"]
    assert steps == 2 * (512 // 32)  # optimiser steps, not batches


def test_accumulate_larger_than_an_epoch_is_a_clear_error(tmp_path):
    with pytest.raises(CnnkitError, match="--accumulate 64"):
        train(config(tmp_path, "big", batch_size=16, accumulate=64), **QUIET)
    with pytest.raises(CnnkitError, match="--accumulate must be at least 1"):
        config(tmp_path, "zero", accumulate=0).validate()


def test_max_epochs_stops_with_a_checkpoint_and_resumes_exactly(tmp_path):
    # The default one-cycle schedule depends on the planned length: the stop must keep it.
    whole = train(config(tmp_path, "whole", batch_size=32), **QUIET)
    part = train(config(tmp_path, "part", batch_size=32, max_epochs=1), **QUIET)
    assert part.stop_reason == "--max-epochs 1" and len(part.history) == 1
    assert torch.load(part.run_dir / "last.pt", weights_only=True)["position"]["epochs_done"] == 1
    resumed = train(TrainConfig(resume=str(part.run_dir), quiet=True), **QUIET)
    assert resumed.stop_reason is None and len(resumed.history) == 2
    got, expected = weights(part.run_dir / "last.pt"), weights(whole.run_dir / "last.pt")
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_max_time_stops_mid_epoch_and_resumes_exactly(tmp_path):
    # Augmentation on: the resumed epoch must replay the same batches and random shifts.
    shifted = dict(batch_size=32, translate=2)
    whole = train(config(tmp_path, "whole", **shifted), **QUIET)
    # 1e-6 minutes have passed before the first step ends: the run stops after that step.
    part = train(config(tmp_path, "part", max_time=1e-6, **shifted), **QUIET)
    assert part.stop_reason == "--max-time 1e-06 minutes" and part.history == []
    ckpt = torch.load(part.run_dir / "last.pt", weights_only=True)
    position = ckpt["position"]  # no epoch finished, one step taken
    assert (position["epochs_done"], position["step"], position["epoch_step"]) == (0, 1, 1)
    assert position["partial"][0]["seen"] == 32  # the images of that step, for epoch 1's row
    resumed = train(TrainConfig(resume=str(part.run_dir), quiet=True), **QUIET)
    got, expected = weights(part.run_dir / "last.pt"), weights(whole.run_dir / "last.pt")
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    assert resumed.history[0]["train_loss"] == pytest.approx(whole.history[0]["train_loss"],
                                                            rel=1e-12)


def test_cli_limits_and_resume(tmp_path):
    args = ["train", "--dataset", "digits", "--train-limit", 256, "--val-fraction", 0,
            "--epochs", 2, "--batch-size", 64, "--out-dir", tmp_path, "--name", "cli", "--quiet"]
    first = cnnkit(*args, "--max-epochs", 1)
    assert first.returncode == 0, first.stderr
    assert "stopped by --max-epochs 1" in first.stdout
    assert f"cnnkit train --resume {tmp_path / 'cli'}" in first.stdout
    second = cnnkit("train", "--resume", tmp_path / "cli", "--quiet")
    assert second.returncode == 0, second.stderr
    assert "resuming" in second.stdout and "stopped by" not in second.stdout
    bad = cnnkit(*args[:-3], "--name", "bad", "--max-time", 0)
    assert bad.returncode == 2 and "--max-time must be a positive" in bad.stderr


def test_max_time_on_an_epochs_last_step_ends_the_run_there(tmp_path):
    one_step_epochs = config(tmp_path, "edge", train_limit=32, batch_size=32, epochs=3,
                             max_time=1e-6)
    result = train(one_step_epochs, **QUIET)
    assert result.stop_reason.startswith("--max-time") and len(result.history) == 1
    assert torch.load(result.run_dir / "last.pt", weights_only=True)["position"]["epochs_done"] == 1
