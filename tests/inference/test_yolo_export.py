"""YOLOv8's raw forward exported to ONNX: onnxruntime against PyTorch on real mnist-det canvases,
raw outputs and detections after the same NMS; the set matching of detections; the
`FORMAT:PATH` data sets (coco-json:, yolo:, voc:) over a tiny folder of real canvases."""
from __future__ import annotations

from dataclasses import replace

import onnxruntime
import pytest
import torch
from PIL import Image

from cnnkit.data import get_dataset_info, load_dataset
from cnnkit.data.det_coco import write_coco
from cnnkit.data.det_formats import write_voc, write_yolo
from cnnkit.inference.export import (DETECTOR_OUTPUTS, _compare_detections, detector_metadata,
                                     export_detector, read_metadata)
from cnnkit.models import create_model
from cnnkit.models.detection.yolo import STRIDES, letterbox
from cnnkit.utils import CnnkitError
from tests.conftest import DATASETS

SIZE = 64


@pytest.fixture(scope="module")
def canvases():
    return load_dataset("mnist-det", "test", data_dir=DATASETS, download=False)


@pytest.fixture(scope="module")
def yolo():
    """Untrained: score_thresh 0 keeps every (point, class) a candidate, so NMS has work."""
    torch.manual_seed(0)
    return create_model("yolov8_cpu", num_classes=11, img_size=SIZE, score_thresh=0.0).eval()


@pytest.fixture(scope="module")
def letterboxed(canvases):
    return letterbox([canvases.images[i].float() / 255 for i in range(3)], SIZE)[0]


def test_forward_raw_shapes_and_eval_path(yolo, letterboxed):
    boxes, scores = yolo.forward_raw(letterboxed)
    anchors = sum((SIZE // s) ** 2 for s in STRIDES)
    assert boxes.shape == (3, anchors, 4) and scores.shape == (3, anchors, 10)
    assert (scores >= 0).all() and (scores <= 1).all()
    assert (boxes[..., 2:] >= boxes[..., :2]).all()  # xyxy: distances are non-negative
    # The eval forward on images already SIZE² (scale 1, no padding) keeps raw boxes, clipped.
    with torch.no_grad():
        found = yolo(list(letterboxed))
    raw = boxes[0].clamp(0, SIZE)
    for box in found[0]["boxes"][:20]:
        assert (raw - box).abs().amax(1).min() < 1e-4


def test_onnx_export_matches_pytorch_raw_and_after_nms(yolo, letterboxed, tmp_path):
    path = tmp_path / "yolo.onnx"
    meta = detector_metadata(name="yolov8_cpu", classes=[str(d) for d in range(10)],
                             img_size=SIZE, score_thresh=yolo.score_thresh,
                             nms_thresh=yolo.nms_thresh, with_preprocessing=False)
    report = export_detector(yolo, path, "onnx", letterboxed, metadata=meta)
    assert report.batch_sizes == (3, 1)
    assert report.max_box_diff <= 1e-4 * SIZE and report.max_score_diff <= 1e-4
    assert report.detections > 0  # the NMS comparison was not vacuous
    # The file on its own: named outputs, a symbolic batch (run at 2, exported at 2 and checked
    # at 3 and 1), NMS left out (every anchor comes back).
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert tuple(o.name for o in session.get_outputs()) == DETECTOR_OUTPUTS
    boxes, scores = session.run(None, {"images": letterboxed[1:].numpy()})
    with torch.no_grad():
        ref_boxes, ref_scores = yolo.forward_raw(letterboxed[1:])
    assert boxes.shape == tuple(ref_boxes.shape) and scores.shape == tuple(ref_scores.shape)
    assert abs(boxes - ref_boxes.numpy()).max() < 1e-4 * SIZE
    read = read_metadata(path)
    assert read["task"] == "detect" and read["classes"] == [str(d) for d in range(10)]
    assert read["input_size"] == [3, SIZE, SIZE] and float(read["nms_thresh"]) == 0.7


def test_export_refuses_a_detector_without_raw_forward(letterboxed, tmp_path):
    class NoRaw(torch.nn.Module):
        detector = True

    with pytest.raises(CnnkitError, match="no raw forward"):
        export_detector(NoRaw(), tmp_path / "x.onnx", "onnx", letterboxed)
    assert not (tmp_path / "x.onnx").exists()


def _dets(boxes, labels, scores):
    return {"boxes": torch.tensor(boxes, dtype=torch.float), "labels": torch.tensor(labels),
            "scores": torch.tensor(scores)}


def test_detections_match_as_sets():
    a = _dets([[0, 0, 10, 10], [5, 5, 20, 20]], [1, 2], [0.5, 0.5])
    swapped = _dets([[5, 5, 20, 20], [0, 0, 10, 10]], [2, 1], [0.5, 0.5])
    assert _compare_detections([a], [swapped], 1e-3, 1e-3) == (2, 0.0, "")
    relabelled = _dets([[5, 5, 20, 20], [0, 0, 10, 10]], [1, 1], [0.5, 0.5])
    assert "no counterpart" in _compare_detections([a], [relabelled], 1e-3, 1e-3)[2]
    moved = _dets([[0, 0, 10, 10], [5, 5, 21, 20]], [1, 2], [0.5, 0.5])
    assert "no counterpart" in _compare_detections([a], [moved], 1e-3, 1e-3)[2]
    assert "1 detections" in _compare_detections([a], [_dets([[0, 0, 10, 10]], [1], [0.5])],
                                                 1e-3, 1e-3)[2]


# --- FORMAT:PATH data sets ---

WRITERS = {"coco-json": lambda ann, folder: write_coco(ann, folder / "annotations.json"),
           "voc": lambda ann, folder: write_voc(ann, folder / "annotations"),
           "yolo": lambda ann, folder: write_yolo(ann, folder / "labels")}


def _folder(root, prefix, canvases):
    """ROOT/train (3 canvases) and ROOT/test (2), PNGs in images/, annotations by cnnkit's own
    writer for `prefix`'s format."""
    for split, picks in (("train", range(3)), ("test", range(3, 5))):
        part = canvases.subset(list(picks))
        part = replace(part, file_names=[f"c{i}.png" for i in picks])
        (root / split / "images").mkdir(parents=True)
        for image, name in zip(part.images, part.file_names):
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(root / split / "images" / name)
        (root / split / "labels").mkdir() if prefix == "yolo" else None
        (root / split / "annotations").mkdir() if prefix == "voc" else None
        WRITERS[prefix](part, root / split)
    return root


@pytest.mark.parametrize("prefix", sorted(WRITERS))
def test_format_path_datasets_load_the_folder(prefix, canvases, tmp_path):
    root = _folder(tmp_path / prefix, prefix, canvases)
    name = f"{prefix}:{root}"
    assert get_dataset_info(name).task == "detect"
    test = load_dataset(name, "test")
    assert len(test) == 2
    for i, (image, target) in enumerate(test):
        original = canvases.targets[3 + i]
        assert torch.equal(image, canvases.images[3 + i])
        names = [test.classes[l - 1] for l in target["labels"].tolist()]
        assert names == [canvases.classes[l - 1] for l in original["labels"].tolist()]
        # YOLO writes 6 decimals of a fraction of the size; COCO and VOC integers or floats
        assert torch.allclose(target["boxes"].float(), original["boxes"].float(), atol=0.51)


def test_format_path_dataset_refuses_another_format(canvases, tmp_path):
    root = _folder(tmp_path / "y", "yolo", canvases)
    with pytest.raises(CnnkitError, match=r"holds YOLO annotations, not VOC; use --dataset yolo:"):
        load_dataset(f"voc:{root}", "train")
    with pytest.raises(CnnkitError, match="give the folder after the colon"):
        get_dataset_info("coco-json:")
    with pytest.raises(CnnkitError, match="unknown data set"):
        get_dataset_info("coco-jsn:/x")
