"""A torchvision COCO weight file — a plain state_dict with FrozenBatchNorm2d backbone buffers and
no `num_batches_tracked` — runs in `cnnkit predict --model NAME`, labelled with COCO's names."""
import re

import pytest
import torch

from cnnkit.inference.detect import detect, load_reference_detector
from cnnkit.models import create_model
from cnnkit.train.coco_eval import COCO_CATEGORY_NAMES
from tests.cli._run import assert_one_line_error, cnnkit
from tests.conftest import DATASETS

RACCOON = DATASETS / "raccoon" / "images" / "raccoon-1.jpg"


@pytest.fixture(scope="module")
def coco_file(tmp_path_factory):
    """The layout torchvision's `fasterrcnn_mobilenet_v3_large_fpn` COCO checkpoint has."""
    torch.manual_seed(0)
    model = create_model("fasterrcnn_mobilenet_v3_large_fpn", backbone_norm="frozen")
    state = model.state_dict()
    # Random weights score every class ~1/91, under the 0.05 threshold: make them call "dog".
    state["roi_heads.box_predictor.cls_score.bias"][COCO_CATEGORY_NAMES.index("dog")] = 10.0
    assert not any(k.startswith("backbone.body") and k.endswith("num_batches_tracked")
                   for k in state)
    path = tmp_path_factory.mktemp("tv") / "fasterrcnn_mobilenet_v3_large_fpn_coco.pth"
    torch.save(state, path)
    return path


def test_the_file_loads_strictly_and_detects(coco_file):
    loaded = load_reference_detector(coco_file, "fasterrcnn_mobilenet_v3_large_fpn")
    assert loaded.classes[0] == "person" and loaded.classes[89] == "toothbrush"
    assert len(loaded.classes) == len(COCO_CATEGORY_NAMES) - 1 == 90
    image = torch.randint(0, 255, (3, 96, 120), dtype=torch.uint8)
    (prediction,) = detect(loaded.model, [image])
    assert set(prediction) == {"boxes", "labels", "scores"}
    boxes = prediction["boxes"]
    assert ((boxes[:, 2] <= 120) & (boxes[:, 3] <= 96)).all()  # in the image's own pixels


def test_a_resnet50_coco_layout_loads_into_the_default_model_too():
    """The reference's note: such a file loads strictly into the BatchNorm2d layout as well."""
    frozen = create_model("fasterrcnn_resnet50_fpn", backbone_norm="frozen").state_dict()
    create_model("fasterrcnn_resnet50_fpn").load_state_dict(frozen, strict=True)


def test_predict_names_coco_categories(coco_file, tmp_path):
    proc = cnnkit("predict", coco_file, RACCOON, "--model", "fasterrcnn_mobilenet_v3_large_fpn",
                  "--score-threshold", "0.0", "--out-dir", tmp_path)
    assert proc.returncode == 0, proc.stderr
    named = re.findall(r"^\s+(.+?)\s+\d\.\d{3}\s+\[", proc.stdout, flags=re.M)
    assert named and set(named) == {"dog"}
    assert (tmp_path / "raccoon-1_detections.png").is_file()


def test_bad_weight_files_get_one_line(coco_file, tmp_path):
    assert_one_line_error(cnnkit("predict", coco_file, RACCOON, "--model", "fasterrcnn_resnet50_fpn"),
                          "weights do not fit")
    assert_one_line_error(cnnkit("predict", coco_file, RACCOON, "--model", "fasterrcnn_resnet5"),
                          "unknown model")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a pickle")
    assert_one_line_error(cnnkit("predict", junk, RACCOON, "--model", "fasterrcnn_resnet50_fpn"),
                          "not a PyTorch weight file")
