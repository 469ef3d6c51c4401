"""The training loop on the embedded digits data set: real torch, real files, small budgets."""
import csv

import pytest
import torch
import yaml

from cnnkit.data import get_dataset_info
from cnnkit.train import TrainConfig, TrainingDiverged, train
from cnnkit.utils import CnnkitError


def quick(tmp_path, **overrides) -> TrainConfig:
    values = dict(dataset="digits", epochs=2, batch_size=64, out_dir=str(tmp_path), name="run",
                  quiet=True, threads=1)
    values.update(overrides)
    return TrainConfig(**values)


def weights(path) -> dict:
    return torch.load(path, weights_only=True)["models"]["model"]


def test_run_folder_contents_and_checkpoint(tmp_path):
    result = train(quick(tmp_path), log=lambda *_: None)
    run = result.run_dir
    for name in ("config.yaml", "metrics.csv", "curves.png", "confusion.png", "predictions.png",
                 "last.pt", "best.pt"):
        assert (run / name).is_file(), name
    assert list(run.glob("events.out.tfevents.*")), "TensorBoard event file"
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["epochs"] == 2 and saved["precision"] in ("fp32", "bf16")  # resolved values
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert {"task", "models", "optimizers", "rng", "position", "history", "config", "spec"} <= set(ckpt)
    info = get_dataset_info("digits")
    n_train = info.train_size - round(0.1 * info.train_size)  # minus the validation split
    position = ckpt["position"]
    assert position["epochs_done"] == 2 and position["epoch_step"] == 0
    assert position["step"] == 2 * (n_train // 64)  # drop_last batches
    assert result.test.count == info.test_size == result.test.confusion.sum()


def test_default_digits_recipe_reaches_98_percent(tmp_path):
    """What `make run` does: the chapter's LeNet on the embedded digits, default recipe."""
    result = train(TrainConfig(out_dir=str(tmp_path), name="default", quiet=True),
                   log=lambda *_: None)
    assert result.test.top1 >= 0.98


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_seeded_deterministic_runs_are_bit_identical(tmp_path, precision):
    def run(name, **seed):  # a short run: determinism does not need the whole data set
        return train(quick(tmp_path, name=name, deterministic=True, precision=precision,
                           train_limit=512, epochs=1, **seed), log=lambda *_: None)
    a, b, c = run("a"), run("b"), run("c", seed=1)
    wa, wb, wc = (weights(r.run_dir / "last.pt") for r in (a, b, c))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not torch.equal(wa["conv1.weight"], wc["conv1.weight"])


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    # Epoch 1 trains normally; the step schedule then multiplies the lr by 1e12.
    config = quick(tmp_path, epochs=3, optimizer="sgd", lr=0.01, schedule="step", step_size=1,
                   gamma=1e12, precision="fp32")
    with pytest.raises(TrainingDiverged, match="last good checkpoint"):
        train(config, log=lambda *_: None)
    kept = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert kept["position"]["epochs_done"] == 1
    assert all(torch.isfinite(t).all() for t in kept["models"]["model"].values())


def test_early_stopping(tmp_path):
    # A learning rate this small cannot move validation accuracy: stop after `early_stop` epochs.
    result = train(quick(tmp_path, epochs=10, lr=1e-12, schedule="constant", early_stop=2),
                   log=lambda *_: None)
    assert len(result.history) == 3


def test_existing_run_is_not_overwritten(tmp_path):
    train(quick(tmp_path, epochs=1), log=lambda *_: None)
    before = (tmp_path / "run" / "last.pt").read_bytes()
    with pytest.raises(CnnkitError, match="--resume"):
        train(quick(tmp_path, epochs=1), log=lambda *_: None)
    assert (tmp_path / "run" / "last.pt").read_bytes() == before


def test_config_validation():
    with pytest.raises(CnnkitError, match="optimizer"):
        TrainConfig(optimizer="adamm").validate()
    with pytest.raises(CnnkitError, match="batch-size"):
        TrainConfig(batch_size=0).validate()
    with pytest.raises(CnnkitError, match="did you mean"):
        TrainConfig.from_dict({"epoch": 3})
