"""`cnnkit predict` / `export` / `benchmark` on a YOLOv8 checkpoint written by the real
`cnnkit train`: COCO-JSON and YOLO-txt results that agree with the printed detections and with
the in-process detector, an ONNX file checked against PyTorch, the raw forward timed."""
from __future__ import annotations

import json
import re

import numpy as np
import onnxruntime
import pytest
import torch
from PIL import Image

from cnnkit.data import load_dataset
from cnnkit.data.det_formats import read_yolo
from cnnkit.inference.detect import detect
from cnnkit.inference.export import read_metadata
from cnnkit.inference.load import load_model
from tests.cli._run import assert_one_line_error, cnnkit
from tests.conftest import DATASETS

IMG_SIZE = 128


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    proc = cnnkit("train", "--model", "yolov8_cpu", "--dataset", "mnist-det", "--train-limit", 8,
                  "--test-limit", 4, "--epochs", 1, "--batch-size", 4, "--model-args",
                  f"img_size={IMG_SIZE}", "--val-fraction", 0, "--data-dir", DATASETS,
                  "--quiet", "--threads", 1, "--out-dir", out, "--name", "yolo")
    assert proc.returncode == 0, proc.stderr
    return out / "yolo"


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Two real canvases as PNG files."""
    folder = tmp_path_factory.mktemp("photos")
    canvases = load_dataset("mnist-det", "test", data_dir=DATASETS, download=False)
    paths = []
    for i in (0, 7):
        paths.append(folder / f"canvas{i}.png")
        Image.fromarray(canvases.images[i].permute(1, 2, 0).numpy()).save(paths[-1])
    return paths


def test_predict_writes_coco_json_and_yolo_txt(run_dir, photos, tmp_path):
    # Threshold 0: a one-epoch model scores low; every detection it keeps is written.
    proc = cnnkit("predict", run_dir, *photos, "--score-threshold", 0, "--out-dir", tmp_path,
                  "--save-json", tmp_path / "dets.json", "--save-txt", tmp_path / "labels")
    assert proc.returncode == 0, proc.stderr
    counts = [int(n) for n in re.findall(r": (\d+) objects? \(score", proc.stdout)]
    assert len(counts) == 2 and sum(counts) > 0

    loaded = load_model(run_dir, task="detect")
    images = [torch.from_numpy(np.array(Image.open(p))).permute(2, 0, 1)
              for p in photos]
    expected = detect(loaded.model, images)  # the same checkpoint, in process

    results = json.loads((tmp_path / "dets.json").read_text())
    assert len(results) == sum(counts)
    category_ids = loaded.spec["category_ids"]
    for image_id, (path, pred, count) in enumerate(zip(photos, expected, counts), 1):
        mine = [r for r in results if r["image_id"] == image_id]
        assert len(mine) == count == len(pred["boxes"])
        x1, y1, x2, y2 = pred["boxes"][0].tolist()
        assert mine[0]["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1], abs=1e-3)
        assert mine[0]["category_id"] == category_ids[int(pred["labels"][0]) - 1]
        assert mine[0]["score"] == pytest.approx(float(pred["scores"][0]), abs=1e-6)

        lines = (tmp_path / "labels" / f"{path.stem}.txt").read_text().splitlines()
        assert len(lines) == count
        assert all(len(line.split()) == 6 for line in lines)  # class cx cy w h score
        assert float(lines[0].split()[5]) == pytest.approx(float(pred["scores"][0]), abs=1e-5)

    # Without the score column the files are YOLO labels: cnnkit's own reader gives the boxes.
    labels = tmp_path / "plain"
    labels.mkdir()
    for txt in (tmp_path / "labels").glob("*.txt"):
        (labels / txt.name).write_text("".join(" ".join(line.split()[:5]) + "\n"
                                               for line in txt.read_text().splitlines()))
    ann = read_yolo(labels, images=photos[0].parent, classes=loaded.classes)
    for entry, target in zip(ann.images, ann.targets):
        pred = expected[[p.name for p in photos].index(entry.file_name)]
        assert torch.equal(target["labels"], pred["labels"])
        assert torch.allclose(target["boxes"].float(), pred["boxes"], atol=1e-3 * 112)


def test_predict_shows_yolo_scores_from_its_own_threshold(run_dir, photos, tmp_path):
    # YOLO's class scores aim at the IoU, so its default is ultralytics' 0.25, not R-CNN's 0.5.
    proc = cnnkit("predict", run_dir, photos[0], "--out-dir", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "(score ≥ 0.25)" in proc.stdout


def test_export_onnx_of_a_yolo_checkpoint(run_dir, tmp_path):
    out = tmp_path / "yolo.onnx"
    proc = cnnkit("export", run_dir, "--check-images", 4, "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert "4 mnist-det test images letterboxed" in proc.stdout
    raw = re.search(r"= ([\d.e+-]+) px \(boxes\), ([\d.e+-]+) \(scores\)", proc.stdout)
    assert float(raw.group(1)) <= 1e-4 * IMG_SIZE and float(raw.group(2)) <= 1e-4
    assert re.search(r"the same (\d+) detections", proc.stdout)
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["boxes", "scores"]
    meta = read_metadata(out)
    assert meta["task"] == "detect" and meta["model"] == "yolov8_cpu"
    assert meta["classes"] == load_model(run_dir, task="detect").classes


def test_benchmark_times_the_raw_forward_at_batch_1_and_n(run_dir):
    proc = cnnkit("benchmark", "--checkpoint", run_dir, "--batch-size", 2, "--modes", "fp32",
                  "bf16", "--iters", 1, "--rounds", 1, "--warmup", 1)
    assert proc.returncode == 0, proc.stderr
    assert f"{IMG_SIZE}×{IMG_SIZE}" in proc.stdout and "trained weights" in proc.stdout
    for batch in (1, 2):
        block = proc.stdout.split(f"batch {batch}:\n")[1]
        assert re.search(r"^fp32\s+[\d.]+\s+1\.00", block, re.M)
        assert re.search(r"^bf16\s+[\d.]+", block, re.M)
    assert re.search(r"largest \|score − fp32 score\| on batch 2: bf16 [\d.e+-]+", proc.stdout)


def test_benchmark_refuses_a_detector_input_size(run_dir):
    proc = cnnkit("benchmark", "--model", "yolov8_cpu", "--input-size", 3, 64, 64,
                  "--iters", 1, "--rounds", 1)
    assert_one_line_error(proc, "runs at 320×320", "img_size")
