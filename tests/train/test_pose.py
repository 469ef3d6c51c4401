"""The pose task end to end on real LSP photos: HRNet (top-down) and OpenPose (bottom-up) trained
by the real `cnnkit train`, judged by PCK@0.2 and OKS AP, then `eval` and `predict` on the
checkpoints; the task's bad input; lsp-multi's scoring of hand-made skeletons."""
import csv
import re

import pytest
import torch

from cnnkit.data.lsp import MultiPersonCanvas
from cnnkit.train.pose import score_canvas
from tests.cli._run import assert_one_line_error, cnnkit
from tests.conftest import DATASETS
from tests.train.test_detect import flags

TINY = dict(dataset="lsp", data_dir=str(DATASETS), train_limit=20, val_fraction=0.2,
            test_limit=6, batch_size=8, epochs=2, quiet=True, threads=2, tensorboard=False,
            precision="fp32", deterministic=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("pose")
    for model, extra in (("pose_hrnet_w16_small", ["--image-size", "128"]),
                         ("openpose_small", ["--image-size", "128"])):
        proc = cnnkit("train", "--model", model, *flags(TINY), *extra, "--out-dir", out,
                      "--name", model)
        assert proc.returncode == 0, proc.stderr
        assert "test PCK@0.2:" in proc.stdout and "PCK@0.2" in proc.stdout
    return out


@pytest.mark.parametrize("model", ["pose_hrnet_w16_small", "openpose_small"])
def test_run_folder_holds_the_scores_and_figures(runs, model):
    run = runs / model
    for name in ("config.yaml", "metrics.csv", "last.pt", "best.pt", "skeletons.png",
                 "heatmaps.png", "pck_per_joint.png"):
        assert (run / name).is_file(), name
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert ckpt["task"] == "pose" and ckpt["best"]["metric"] == "val_pck"
    assert ckpt["spec"]["bottom_up"] == (model == "openpose_small")
    assert len(ckpt["spec"]["skeleton"]) == 13 and len(ckpt["spec"]["classes"]) == 14
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert len(rows) == 2 and all(0 <= float(r["val_pck"]) <= 1 for r in rows)


def test_eval_prints_the_pck_table_and_multi_person_assembly(runs):
    proc = cnnkit("eval", runs / "pose_hrnet_w16_small", "--limit", "4")
    assert proc.returncode == 0, proc.stderr
    assert "lsp test (4 images" in proc.stdout and "shoulder" in proc.stdout
    assert "OKS AP" in proc.stdout
    share = re.search(r"people with at least half their joints within PCK@0.2: ([\d.]+)%",
                      proc.stdout)
    assert share and float(share.group(1)) in (0.0, 25.0, 50.0, 75.0, 100.0)  # a share of 4 people
    proc = cnnkit("eval", runs / "openpose_small", "--limit", "4")
    assert proc.returncode == 0, proc.stderr
    assert "lsp-multi" in proc.stdout and "assembled correctly" in proc.stdout


def test_eval_scale_search_is_for_bottom_up_models(runs):
    proc = cnnkit("eval", runs / "openpose_small", "--limit", "2", "--scales", "0.75,1,1.25")
    assert proc.returncode == 0, proc.stderr
    assert "scales 0.75,1.0,1.25): PCK@0.2" in proc.stdout and "lsp-multi" in proc.stdout
    assert_one_line_error(cnnkit("eval", runs / "pose_hrnet_w16_small", "--scales", "1,2"),
                          "--scales is for bottom-up")
    assert_one_line_error(cnnkit("eval", runs / "openpose_small", "--scales", "0,1"),
                          "--scales", "'0,1'")


def test_openpose_resnet18_starts_from_a_classifier_run(tmp_path):
    """A ResNet-18 trained on digits (1 channel): every trunk tensor but conv1 is taken; HRNet,
    which has no classifier trunk, is refused in one line."""
    classifier = cnnkit("train", "--model", "resnet18", "--dataset", "digits", "--epochs", "1",
                        "--train-limit", "64", "--quiet", "--out-dir", tmp_path, "--name", "r18")
    assert classifier.returncode == 0, classifier.stderr
    tiny = dict(TINY, train_limit=8, batch_size=4, test_limit=2, epochs=1)
    proc = cnnkit("train", "--model", "openpose_resnet18", *flags(tiny), "--image-size", "64",
                  "--backbone-weights", tmp_path / "r18", "--out-dir", tmp_path, "--name", "op")
    assert proc.returncode == 0, proc.stderr
    assert "backbone: 59/60 tensors from" in proc.stdout  # conv1: 1 input channel, not 3
    proc = cnnkit("train", "--model", "pose_hrnet_w16_small", *flags(tiny), "--backbone-weights",
                  tmp_path / "r18", "--out-dir", tmp_path)
    assert_one_line_error(proc, "has no backbone that a classifier's weights can start")


@pytest.mark.parametrize("model", ["pose_hrnet_w16_small", "openpose_small"])
def test_predict_draws_skeletons(runs, model, tmp_path):
    image = DATASETS / "lsp" / "images" / "im1500.jpg"
    proc = cnnkit("predict", runs / model, image, tmp_path / "missing.jpg",
                  "--out-dir", tmp_path)
    assert proc.returncode == 2  # the missing file, reported; the photo still predicted
    assert "im1500.jpg:" in proc.stdout and (tmp_path / "im1500_pose.png").is_file()


def test_pose_bad_input_is_one_line(tmp_path):
    proc = cnnkit("train", "--model", "pose_hrnet_w16_small", *flags(TINY), "--image-size",
                  "100", "--out-dir", tmp_path)
    assert_one_line_error(proc, "multiple of 128")
    proc = cnnkit("train", "--model", "lenet", *flags(TINY), "--out-dir", tmp_path)
    assert_one_line_error(proc, "not a pose network")


def test_score_canvas_counts_people_and_each_kind_of_skeleton():
    left = torch.stack([torch.linspace(10, 60, 14), torch.linspace(20, 150, 14)], 1)
    left[9] = left[2] + torch.tensor([0.0, 50.0])  # torso 50 px: PCK@0.2 radius 10 px
    right = left + torch.tensor([100.0, 0.0])
    canvas = MultiPersonCanvas(torch.zeros(3, 200, 200, dtype=torch.uint8),
                               torch.stack([left, right]), [(0, 100), (100, 200)], ["a", "b"])
    borrowed = right.clone()
    borrowed[0] = torch.tensor([50.0, 5.0])  # one joint from the left person's tile
    partial = left + 1.0
    partial[5:] = float("nan")  # five joints, all close to the left person: a second skeleton
    stray = torch.full((14, 2), 190.0)  # near nobody
    counts = score_canvas([left.clone(), borrowed, partial, stray], canvas)
    assert counts == dict(people=2, skeletons=4, found=2, correct=1, right=1, mixed=1,
                          duplicate=1, nobody=1)
    # half of the found joints must be close: 7 of 14 is enough, 6 is not
    half = left.clone()
    half[:7] += 40.0
    assert score_canvas([half], canvas)["found"] == 1
    half[7] += 40.0
    assert score_canvas([half], canvas)["found"] == 0
    assert score_canvas([], canvas) == dict(people=2, skeletons=0, found=0, correct=0, right=0,
                                            mixed=0, duplicate=0, nobody=0)
