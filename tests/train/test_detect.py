"""The detection task end to end on real mnist-det canvases (MNIST digits): a small Faster R-CNN
and Mask R-CNN trained by the real `cnnkit train`, judged by pycocotools, then `eval` and
`predict` on the checkpoint; resume after --max-epochs; the task's bad input."""
import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from cnnkit.train import TrainConfig, train
from tests.cli._run import assert_one_line_error, cnnkit
from tests.conftest import DATASETS

# 8 canvases of 128×128 at their own size, 2 steps of 4: seconds per run on 2 cores.
TINY = dict(dataset="mnist-det", data_dir=str(DATASETS), train_limit=8, val_fraction=0.0,
            test_limit=4, batch_size=4, optimizer="adamw", lr=1e-3, schedule="constant",
            model_args={"min_size": 128, "max_size": 128}, quiet=True, threads=2,
            tensorboard=False, precision="fp32", deterministic=True)


def flags(values: dict) -> list[str]:
    out = []
    for key, value in values.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            out.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, dict):
            out += [flag, ",".join(f"{k}={v}" for k, v in value.items())]
        else:
            out += [flag, str(value)]
    return out


@pytest.fixture(scope="module")
def det_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("det")
    proc = cnnkit("train", "--model", "fasterrcnn_resnet18_fpn", *flags(TINY), "--epochs", "2",
                  "--train-limit", "12", "--val-fraction", "0.34", "--out-dir", out,
                  "--name", "frcnn")
    assert proc.returncode == 0, proc.stderr
    assert "test box AP:" in proc.stdout and "Average Precision" in proc.stdout
    return out / "frcnn"


def test_run_folder_holds_the_coco_results_and_figures(det_run):
    for name in ("config.yaml", "metrics.csv", "last.pt", "best.pt", "predictions.png",
                 "pr_curve.png", "detections.json"):
        assert (det_run / name).is_file(), name
    saved = yaml.safe_load((det_run / "config.yaml").read_text())
    assert saved["monitor"] == "val_map" and saved["test_limit"] == 4
    ckpt = torch.load(det_run / "last.pt", weights_only=True)
    assert ckpt["task"] == "detect" and ckpt["spec"]["classes"] == [str(d) for d in range(10)]
    assert ckpt["spec"]["models"]["model"]["kwargs"]["num_classes"] == 11  # 10 digits + background
    assert ckpt["best"]["metric"] == "val_map"
    rows = (det_run / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,train_loss,val_map,val_ap50,lr") and len(rows) == 3
    results = json.loads((det_run / "detections.json").read_text())
    assert all(set(r) >= {"image_id", "category_id", "bbox", "score"} for r in results)
    assert {r["category_id"] for r in results} <= set(range(1, 11))


def test_eval_prints_the_coco_table(det_run, tmp_path):
    out = tmp_path / "results.json"
    proc = cnnkit("eval", det_run, "--limit", "4", "--coco-json", out)
    assert proc.returncode == 0, proc.stderr
    assert "mnist-det test (4 images" in proc.stdout
    assert "Average Recall" in proc.stdout and "bbox AP" in proc.stdout
    assert isinstance(json.loads(out.read_text()), list)


def test_predict_draws_the_objects_of_any_image(det_run, tmp_path):
    canvas = np.zeros((100, 150, 3), np.uint8)
    canvas[20:60, 30:50] = 255  # a bar, roughly a "1"
    Image.fromarray(canvas).save(tmp_path / "bar.png")
    proc = cnnkit("predict", det_run, tmp_path / "bar.png", "--out-dir", tmp_path,
                  "--score-threshold", "0.0")
    assert proc.returncode == 0, proc.stderr
    assert "bar.png:" in proc.stdout and "object" in proc.stdout
    drawn = np.asarray(Image.open(tmp_path / "bar_detections.png"))
    assert drawn.shape == (100, 150, 3)


def test_mask_rcnn_is_judged_on_boxes_and_masks(tmp_path):
    result = train(TrainConfig(model="maskrcnn_resnet18_fpn", **TINY, epochs=1,
                               out_dir=str(tmp_path), name="mask"), log=lambda *_: None)
    assert set(result.test.stats) == {"bbox", "segm"}
    assert all(0.0 <= result.test.stats[t]["AP50"] <= 1.0 for t in ("bbox", "segm"))
    assert result.history[0]["train_loss"] > 0


def test_resumed_run_matches_the_uninterrupted_one(tmp_path):
    """--max-epochs 1 then --resume: the weights of the 2-epoch run, bit for bit (the RPN's and
    RoI sampler's random draws are part of the checkpoint's RNG state)."""
    config = dict(TINY, model="fasterrcnn_resnet18_fpn", epochs=2, out_dir=str(tmp_path))
    whole = train(TrainConfig(**config, name="whole"), log=lambda *_: None)
    train(TrainConfig(**config, name="part", max_epochs=1), log=lambda *_: None)
    resumed = train(TrainConfig(resume=str(tmp_path / "part"), quiet=True), log=lambda *_: None)
    assert len(resumed.history) == 2
    expected = whole.model.state_dict()
    got = resumed.model.state_dict()
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_a_classifier_or_a_mask_model_without_masks_is_refused(tmp_path):
    base = ["--dataset", "raccoon", "--data-dir", DATASETS, "--epochs", "1", "--quiet",
            "--out-dir", tmp_path]
    assert_one_line_error(cnnkit("train", "--model", "resnet18", *base), "not a detector")
    assert_one_line_error(cnnkit("train", "--model", "maskrcnn_resnet18_fpn", *base),
                          "has none")


def test_backbone_weights_must_fit(tmp_path):
    classifier = cnnkit("train", "--model", "lenet", "--dataset", "digits", "--epochs", "1",
                        "--train-limit", "64", "--quiet", "--out-dir", tmp_path, "--name", "lenet")
    assert classifier.returncode == 0, classifier.stderr
    proc = cnnkit("train", "--model", "fasterrcnn_resnet18_fpn", *flags(TINY), "--epochs", "1",
                  "--backbone-weights", tmp_path / "lenet", "--out-dir", tmp_path)
    assert_one_line_error(proc, "no tensor matches the backbone")


def test_backbone_starts_from_a_resnet18_classifier_run(tmp_path):
    """A ResNet-18 trained on digits (1 channel): every body tensor but the first conv fits."""
    classifier = train(TrainConfig(model="resnet18", dataset="digits", epochs=1, train_limit=64,
                                   batch_size=32, quiet=True, tensorboard=False,
                                   out_dir=str(tmp_path), name="r18"), log=lambda *_: None)
    lines = []
    train(TrainConfig(model="fasterrcnn_resnet18_fpn", **dict(TINY, test_limit=1), epochs=1,
                      backbone_weights=str(classifier.run_dir), out_dir=str(tmp_path),
                      name="det"), log=lines.append)
    taken = [line for line in lines if line.startswith("backbone:")]
    assert taken, lines
    got, total = map(int, taken[0].split()[1].split("/"))
    body = {k: v for k, v in classifier.model.state_dict().items() if not k.startswith("fc.")}
    assert got == len(body) - 1 and total == len(body)  # conv1: 1 input channel, not 3
