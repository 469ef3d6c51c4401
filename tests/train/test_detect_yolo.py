"""YOLOv8 through the detection task: mosaic, its closing epochs and the EMA, trained by the real
`cnnkit train` on mnist-det canvases, judged by pycocotools, then `eval` on the EMA weights."""
import csv

import pytest
import torch

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
