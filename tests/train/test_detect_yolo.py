"""YOLOv8 through the detection task: mosaic, its closing epochs and the EMA, trained by the real
`cnnkit train` on mnist-det canvases, judged by pycocotools, then `eval` on the EMA weights."""
import csv

import pytest
import torch

from cnnkit.train import TrainConfig, train
from tests.cli._run import cnnkit
from tests.train.test_detect import TINY, flags

YOLO = {**TINY, "model_args": {"img_size": 128}, "lr": 2e-3}


@pytest.fixture(scope="module")
def yolo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("yolo")
    proc = cnnkit("train", "--model", "yolov8_cpu", *flags(YOLO), "--epochs", "3",
                  "--close-mosaic", "1", "--train-limit", "12", "--val-fraction", "0.34",
                  "--out-dir", out, "--name", "yolo")
    assert proc.returncode == 0, proc.stderr
    assert "YOLO recipe: mosaic on (off for the last 1 epochs)" in proc.stdout
    assert "EMA decay 0.9999" in proc.stdout and "test box AP:" in proc.stdout
    return out / "yolo"


def test_yolo_run_saves_its_ema_and_its_loss_terms(yolo_run):
    ckpt = torch.load(yolo_run / "last.pt", weights_only=True)
    assert set(ckpt["ema"]) == {"model"} and ckpt["ema"]["model"]["num_updates"] == 3 * 2
    averaged, raw = ckpt["ema"]["model"]["model"], ckpt["models"]["model"]
    assert averaged.keys() == raw.keys()
    assert any(not torch.equal(averaged[k], raw[k]) for k in raw if raw[k].is_floating_point())
    rows = list(csv.DictReader((yolo_run / "metrics.csv").open()))
    assert len(rows) == 3 and all(float(r[k]) >= 0 for r in rows for k in ("box", "cls", "dfl"))


def test_eval_scores_the_checkpoint(yolo_run):
    proc = cnnkit("eval", yolo_run, "--limit", "4")
    assert proc.returncode == 0, proc.stderr
    assert "bbox AP" in proc.stdout


def test_mosaic_on_a_detector_without_a_fixed_size_is_refused(tmp_path):
    proc = cnnkit("train", "--model", "fasterrcnn_resnet18_fpn", *flags(TINY), "--mosaic",
                  "--epochs", "1", "--out-dir", tmp_path)
    assert proc.returncode == 2 and "--mosaic needs a detector with a fixed input size" in proc.stderr


def test_backbone_starts_from_a_yolo_classifier_run(tmp_path):
    """yolov8_cpu_cls trained on digits (1 channel) starts yolov8_cpu's CSPDarknet: every
    classifier backbone tensor but the stem conv fits; SPPF (not in the classifier) stays new."""
    classifier = train(TrainConfig(model="yolov8_cpu_cls", dataset="digits", epochs=1,
                                   train_limit=64, batch_size=32, quiet=True, tensorboard=False,
                                   out_dir=str(tmp_path), name="cls"), log=lambda *_: None)
    lines = []
    detector = train(TrainConfig(model="yolov8_cpu", **dict(YOLO, test_limit=1), epochs=1,
                                 backbone_weights=str(classifier.run_dir), mosaic=False,
                                 out_dir=str(tmp_path), name="det"), log=lines.append)
    taken = [line for line in lines if line.startswith("backbone:")]
    assert taken, lines
    assert "YOLO recipe: mosaic and HSV off, EMA decay 0.9999" in lines
    got, total = map(int, taken[0].split()[1].split("/"))
    backbone = [k for k in classifier.model.state_dict() if k.startswith("backbone.")]
    detector_backbone = detector.model.backbone.state_dict()
    assert got == len(backbone) - 1  # stem: 1 input channel, not 3
    assert total == len(detector_backbone) > len(backbone)  # + SPPF


def test_resumed_yolo_run_matches_the_uninterrupted_one(tmp_path):
    """--max-epochs 1 then --resume through mosaic, its closing epoch and the EMA: the weights
    and their average bit for bit (the mosaic's draws and the EMA's count are checkpointed)."""
    config = dict(YOLO, model="yolov8_cpu", epochs=2, close_mosaic=1, out_dir=str(tmp_path))
    train(TrainConfig(**config, name="whole"), log=lambda *_: None)
    train(TrainConfig(**config, name="part", max_epochs=1), log=lambda *_: None)
    resumed = train(TrainConfig(resume=str(tmp_path / "part"), quiet=True), log=lambda *_: None)
    assert len(resumed.history) == 2
    got, expected = (torch.load(tmp_path / name / "last.pt", weights_only=True)
                     for name in ("part", "whole"))
    for key in ("models", "ema"):
        flat_got, flat_expected = _flatten(got[key]), _flatten(expected[key])
        assert flat_got.keys() == flat_expected.keys()
        assert all(torch.equal(torch.as_tensor(flat_got[k]), torch.as_tensor(flat_expected[k]))
                   for k in flat_expected), key


def test_yolo_trains_on_two_ranks(tmp_path):
    """`cnnkit train --nproc 2`: mosaic batches sharded over 2 torchrun ranks, the EMA kept by
    each, one run folder and one test line (rank 0's)."""
    proc = cnnkit("train", "--nproc", 2, "--model", "yolov8_cpu",
                  *flags(dict(YOLO, threads=1)), "--epochs", 1, "--out-dir", tmp_path,
                  "--name", "ddp", cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("test box AP:") == 1
    ckpt = torch.load(tmp_path / "ddp" / "last.pt", weights_only=True)
    # 8 canvases, 2 ranks × batch 4 = one step per epoch: the EMA saw that one update.
    assert ckpt["ema"]["model"]["num_updates"] == 1
    assert list(tmp_path.iterdir()) == [tmp_path / "ddp"]


def _flatten(tree, prefix="") -> dict:
    """Nested checkpoint dicts as {"a.b.c": leaf}."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out = {}
    for key, value in tree.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out
