"""The segmentation task end to end on real ISBI 2012 slices: a tiny U-Net trained by the real
`cnnkit train`, then `eval`, `predict` and `export` on its checkpoint, and the task's bad input."""
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from cnnkit.train import TrainConfig, train
from tests.cli._run import assert_one_line_error, cnnkit
from tests.conftest import DATASETS

ISBI = DATASETS / "isbi2012-membrane"
TINY = ["--model", "unet_small", "--model-args", "base_channels=8", "--dataset", "isbi2012",
        "--data-dir", DATASETS, "--train-limit", "8", "--crop-size", "64", "--batch-size", "2",
        "--quiet", "--threads", "1", "--no-tensorboard"]


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("seg")
    proc = cnnkit("train", *TINY, "--epochs", "2", "--elastic", "--border-weight", "--out-dir",
                  out, "--name", "unet")
    assert proc.returncode == 0, proc.stderr
    assert "test mIoU:" in proc.stdout and "ISBI scores: rand_f" in proc.stdout
    assert "rand_f_max" in proc.stdout and "threshold_max" in proc.stdout
    assert "rand_f_watershed" in proc.stdout  # the post-processed segmentation's, told apart
    return out / "unet"


def test_run_folder_figures_and_scores(seg_run):
    for name in ("config.yaml", "metrics.csv", "last.pt", "best.pt", "overlays.png",
                 "class_iou.png", "cells.png"):  # cells.png: ISBI's cells, thresholded and flooded
        assert (seg_run / name).is_file(), name
    saved = yaml.safe_load((seg_run / "config.yaml").read_text())
    assert saved["monitor"] == "val_miou" and saved["elastic"] and saved["border_weight"]
    ckpt = torch.load(seg_run / "last.pt", weights_only=True)
    assert ckpt["task"] == "segment" and ckpt["spec"]["classes"] == ["membrane", "cell"]
    assert ckpt["best"]["metric"] == "val_miou"
    assert 0.0 <= ckpt["best"]["value"] <= 1.0
    rows = (seg_run / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,train_loss,val_pixel_acc,val_miou,lr") and len(rows) == 3


def test_eval_prints_the_class_table(seg_run):
    proc = cnnkit("eval", seg_run)
    assert proc.returncode == 0, proc.stderr
    assert "isbi2012 test (5 images, whole)" in proc.stdout
    assert "membrane" in proc.stdout and "cell" in proc.stdout and "rand_f_max" in proc.stdout


def test_predict_writes_a_mask_and_an_overlay_at_the_image_size(seg_run, tmp_path):
    image = ISBI / "test" / "3.png"
    proc = cnnkit("predict", seg_run, image, "--out-dir", tmp_path)
    assert proc.returncode == 0, proc.stderr
    mask = np.asarray(Image.open(tmp_path / "3_mask.png"))
    assert mask.shape == (512, 512) and set(np.unique(mask)) <= {0, 1}
    overlay = np.asarray(Image.open(tmp_path / "3_overlay.png"))
    assert overlay.shape == (512, 512, 3)
    odd = tmp_path / "odd.png"  # a size no pooling grid divides: padded, then cropped back
    Image.open(image).crop((0, 0, 301, 157)).save(odd)
    assert cnnkit("predict", seg_run, odd, "--out-dir", tmp_path).returncode == 0
    assert np.asarray(Image.open(tmp_path / "odd_mask.png")).shape == (157, 301)


def test_predict_cells_writes_the_watershed_labeling(seg_run, tmp_path):
    """`--cells`: a 16-bit labeling equal to the seeded watershed of the model's own map."""
    from cnnkit.inference.load import load_model
    from cnnkit.inference.segment import predict_probabilities
    from cnnkit.train.seg_metrics import watershed_cells
    image = ISBI / "train" / "image" / "27.png"
    proc = cnnkit("predict", seg_run, image, "--cells", "--out-dir", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "27_cells.png" in proc.stdout
    written = np.asarray(Image.open(tmp_path / "27_cells.png"))
    assert written.shape == (512, 512) and written.dtype == np.uint16
    loaded = load_model(seg_run, task="segment")
    pixels = torch.from_numpy(np.asarray(Image.open(image)).copy())[None, None]  # (1, 1, H, W)
    probability = predict_probabilities(loaded.model, pixels, loaded.mean, loaded.std)
    assert np.array_equal(written, watershed_cells(probability[0, 1]))


def test_export_onnx_matches_pytorch(seg_run, tmp_path):
    proc = cnnkit("export", seg_run, "-o", tmp_path / "unet.onnx", "--check-images", "2")
    assert proc.returncode == 0, proc.stderr
    assert "isbi2012 test images" in proc.stdout  # checked on real slices


def test_a_classifier_on_masks_is_a_one_line_error(tmp_path):
    proc = cnnkit("train", *TINY, "--model", "lenet", "--model-args", "", "--epochs", "1",
                  "--out-dir", tmp_path)
    assert_one_line_error(proc, "lenet is a classifier", "segmentation model")


def test_resume_continues_a_segmentation_run(tmp_path):
    common = dict(model="unet_small", model_args={"base_channels": 8}, dataset="isbi2012",
                  data_dir=str(DATASETS), train_limit=6, crop_size=64, batch_size=2, quiet=True,
                  threads=1, tensorboard=False, out_dir=str(tmp_path), deterministic=True,
                  precision="fp32")
    whole = train(TrainConfig(name="whole", epochs=2, **common), log=lambda *_: None)
    train(TrainConfig(name="part", epochs=2, max_epochs=1, **common), log=lambda *_: None)
    resumed = train(TrainConfig(resume=str(tmp_path / "part"), quiet=True), log=lambda *_: None)
    a = torch.load(whole.run_dir / "last.pt", weights_only=True)["models"]["model"]
    b = torch.load(resumed.run_dir / "last.pt", weights_only=True)["models"]["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.test.miou == pytest.approx(whole.test.miou)
