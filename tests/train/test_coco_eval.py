"""COCO evaluation against pycocotools run by the book on JSON files, and on hand-made cases."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from cnnkit.train.coco_eval import (COCO_CATEGORY_NAMES, COCO_PERSON_KEYPOINT_NAMES,
                                    COCO_PERSON_KPT_SIGMAS, COCO_PERSON_SKELETON, DET_STAT_NAMES,
                                    coco_evaluate, predictions_to_coco, targets_to_coco,
                                    write_coco_json)
from cnnkit.utils import CnnkitError

SIZES = [(96, 128), (120, 100), (80, 80), (100, 140)]  # (H, W) of the random case's images


def _box_mask(boxes, height, width) -> torch.Tensor:
    """(N, H, W) uint8: an ellipse inscribed in each box (not the box itself, so mask and box
    areas differ)."""
    ys, xs = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    masks = []
    for x1, y1, x2, y2 in boxes.tolist():
        cx, cy, rx, ry = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2, (y2 - y1) / 2
        masks.append(((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1)
    return torch.stack(masks).to(torch.uint8) if masks else torch.zeros(0, height, width,
                                                                        dtype=torch.uint8)


def _random_boxes(generator, count, height, width) -> torch.Tensor:
    xy = torch.rand(count, 2, generator=generator) * torch.tensor([width * 0.6, height * 0.6])
    wh = 8 + torch.rand(count, 2, generator=generator) * torch.tensor([width, height]) * 0.4
    return torch.cat([xy, xy + wh], dim=1).round()


@pytest.fixture
def random_case():
    """4 images, 3 classes with COCO ids 7, 3, 11 and image ids 42, 5, 17, 100; predictions:
    jittered truth (some with the wrong label, some missed) and false positives, random scores."""
    g = torch.Generator().manual_seed(1)
    targets, predictions = [], []
    for image_id, (h, w), n in zip((42, 5, 17, 100), SIZES, (3, 0, 4, 2)):
        boxes = _random_boxes(g, n, h, w)
        labels = torch.randint(1, 4, (n,), generator=g)
        targets.append({"boxes": boxes, "labels": labels, "image_id": image_id,
                        "masks": _box_mask(boxes, h, w),
                        "iscrowd": torch.zeros(n, dtype=torch.int64)})
        kept = torch.rand(n, generator=g) > 0.2
        jitter = boxes[kept] + torch.randn(int(kept.sum()), 4, generator=g) * 4
        wrong = torch.rand(int(kept.sum()), generator=g) < 0.2
        pred_labels = torch.where(wrong, labels[kept] % 3 + 1, labels[kept])
        false = _random_boxes(g, 2, h, w)
        pred_boxes = torch.cat([jitter, false]).clamp(min=0)
        pred_boxes[:, 2:] = torch.maximum(pred_boxes[:, 2:], pred_boxes[:, :2] + 2)
        masks = _box_mask(pred_boxes, h, w).float()[:, None] * 0.8  # (M, 1, H, W) probabilities
        false_labels = torch.randint(1, 4, (2,), generator=g)
        predictions.append({"boxes": pred_boxes, "labels": torch.cat([pred_labels, false_labels]),
                            "scores": torch.rand(len(pred_boxes), generator=g), "masks": masks})
    return targets, predictions


def _by_the_book(tmp_path, targets, predictions, iou_type):
    """pycocotools as its README uses it: GT and results JSON files written by hand from the
    targets → COCO(file), loadRes(file), COCOeval. Returns COCOeval.stats."""
    category_ids = [7, 3, 11]
    images, annotations, results = [], [], []
    for target, (h, w), pred in zip(targets, SIZES, predictions):
        images.append({"id": target["image_id"], "height": h, "width": w})
        masks = target["masks"].numpy()
        for box, label, mask in zip(target["boxes"].tolist(), target["labels"].tolist(), masks):
            rle = mask_utils.encode(np.asfortranarray(mask))
            rle["counts"] = rle["counts"].decode()
            x1, y1, x2, y2 = box
            annotations.append({"id": len(annotations) + 1, "image_id": target["image_id"],
                                "category_id": category_ids[label - 1], "iscrowd": 0,
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "segmentation": rle,
                                "area": float(mask.sum())})  # COCO's area: the mask's
        for box, label, score, mask in zip(pred["boxes"].tolist(), pred["labels"].tolist(),
                                           pred["scores"].tolist(), pred["masks"].numpy()):
            x1, y1, x2, y2 = box
            result = {"image_id": target["image_id"], "category_id": category_ids[label - 1],
                      "score": score}
            if iou_type == "bbox":
                result["bbox"] = [x1, y1, x2 - x1, y2 - y1]
            else:
                rle = mask_utils.encode(np.asfortranarray((mask[0] > 0.5).astype(np.uint8)))
                result["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode()}
            results.append(result)
    categories = [{"id": c, "name": n} for c, n in zip(category_ids, "abc")]
    write_coco_json(tmp_path / "gt.json", {"images": images, "annotations": annotations,
                                           "categories": categories})
    write_coco_json(tmp_path / "dt.json", results)
    gt = COCO(str(tmp_path / "gt.json"))
    evaluator = COCOeval(gt, gt.loadRes(str(tmp_path / "dt.json")), iou_type)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return evaluator.stats


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_agrees_with_pycocotools_on_json_files(tmp_path, random_case, iou_type):
    targets, predictions = random_case
    scores = coco_evaluate(targets, SIZES, predictions, ["a", "b", "c"], iou_types=(iou_type,),
                           category_ids=[7, 3, 11])
    expected = _by_the_book(tmp_path, targets, predictions, iou_type)
    ours = np.array([scores.stats[iou_type][name] for name in DET_STAT_NAMES])
    np.testing.assert_allclose(ours, np.where(expected > -1, expected, np.nan), rtol=0, atol=1e-12)
    assert 0.1 < ours[0] < 0.95  # a case that tells right from wrong conversions
    # Every class has ground truth here, so the per-class APs average to the AP.
    assert np.mean(list(scores.per_class[iou_type].values())) == pytest.approx(ours[0])
    assert scores.table().count("Average Precision") == 6


def test_own_json_files_load_in_pycocotools(tmp_path, random_case):
    """targets_to_coco / predictions_to_coco written by write_coco_json score as in memory."""
    targets, predictions = random_case
    ids = [t["image_id"] for t in targets]
    gt_path = write_coco_json(tmp_path / "gt.json", targets_to_coco(targets, SIZES, ["a", "b", "c"],
                                                                     [7, 3, 11]))
    dt_path = write_coco_json(tmp_path / "dt.json",
                              predictions_to_coco(predictions, ids, [7, 3, 11]))
    gt = COCO(str(gt_path))
    evaluator = COCOeval(gt, gt.loadRes(str(dt_path)), "bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    scores = coco_evaluate(targets, SIZES, predictions, ["a", "b", "c"], category_ids=[7, 3, 11])
    assert scores.stats["bbox"]["AP"] == evaluator.stats[0]
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporary file


def _keypoint_case(num_joints=17):
    g = torch.Generator().manual_seed(3)
    boxes = torch.tensor([[10.0, 10.0, 70.0, 90.0], [50.0, 20.0, 110.0, 100.0]])
    xy = boxes[:, None, :2] + torch.rand(2, num_joints, 2, generator=g) * 60
    visibility = torch.full((2, num_joints, 1), 2.0)
    visibility[0, :3] = 0
    xy[0, :3] = 0  # COCO's unlabelled keypoints: x = y = v = 0
    keypoints = torch.cat([xy, visibility], dim=2)
    target = {"boxes": boxes, "labels": torch.tensor([1, 1]), "image_id": 1,
              "keypoints": keypoints, "masks": _box_mask(boxes, 120, 120)}
    prediction = {"boxes": boxes.clone(), "labels": torch.tensor([1, 1]),
                  "scores": torch.tensor([1.0, 1.0]), "masks": target["masks"][:, None].float(),
                  "keypoints": torch.cat([xy, torch.ones(2, num_joints, 1)], dim=2),
                  "keypoints_scores": torch.ones(2, num_joints)}
    return target, prediction


def test_perfect_predictions_score_one():
    target, prediction = _keypoint_case()
    scores = coco_evaluate([target], [(120, 120)], [prediction], ["person"],
                           iou_types=("bbox", "segm", "keypoints"))
    for iou_type in ("bbox", "segm", "keypoints"):
        assert scores.stats[iou_type]["AP"] == pytest.approx(1.0)
        assert scores.per_class[iou_type]["person"] == pytest.approx(1.0)
    assert scores.stats["bbox"]["AR100"] == pytest.approx(1.0)
    assert scores.stats["keypoints"]["AR"] == pytest.approx(1.0)
    assert math.isnan(scores.stats["bbox"]["APs"])  # no small objects: COCO's -1, made NaN
    table = scores.table()
    assert "keypoints:" in table and "segm:" in table and table.count("maxDets= 20") == 10


def test_keypoint_sigmas_are_used_and_checked():
    """4 keypoints, each 3 px off: generous sigmas forgive it, tight ones do not."""
    target, prediction = _keypoint_case(num_joints=4)
    prediction["keypoints"][..., :2] += 3
    loose, tight = [coco_evaluate([target], [(120, 120)], [prediction], ["thing"],
                                  iou_types=("keypoints",), kpt_sigmas=[s] * 4)
                    .stats["keypoints"]["AP"] for s in (1.0, 0.01)]
    assert loose == pytest.approx(1.0) and tight < 0.2
    with pytest.raises(CnnkitError, match="17 keypoint sigmas for 4 keypoints"):
        coco_evaluate([target], [(120, 120)], [prediction], ["thing"], iou_types=("keypoints",))
    five = {**prediction, "keypoints": torch.zeros(2, 5, 3)}
    with pytest.raises(CnnkitError, match=r"keypoint counts differ: \[4\] in the targets, \[5\]"):
        coco_evaluate([target], [(120, 120)], [five], ["thing"], iou_types=("keypoints",))
    half = {key: value.half() if value.is_floating_point() else value  # autocast's outputs
            for key, value in prediction.items()}
    assert coco_evaluate([target], [(120, 120)], [half], ["thing"], iou_types=("keypoints",),
                         kpt_sigmas=[1.0] * 4).stats["keypoints"]["AP"] == pytest.approx(1.0)


def test_hand_computed_ap50():
    """Truth (10, 10)–(50, 50); a false positive at 0.95 ranks above a hit of IoU 0.6 at 0.9.
    Precision is 0 then 1/2 at recall 1; COCO's interpolation makes it 1/2 at every one of
    the 101 recall points: AP50 = 0.5, and at IoU 0.75 nothing matches: AP75 = 0."""
    target = {"boxes": torch.tensor([[10.0, 10.0, 50.0, 50.0]]), "labels": torch.tensor([1]),
              "image_id": 7}
    prediction = {"boxes": torch.tensor([[60.0, 60.0, 90.0, 90.0], [10.0, 10.0, 50.0, 34.0]]),
                  "labels": torch.tensor([1, 1]), "scores": torch.tensor([0.95, 0.9])}
    scores = coco_evaluate([target], [(100, 100)], [prediction], ["box"])
    assert scores.stats["bbox"]["AP50"] == pytest.approx(0.5)
    assert scores.stats["bbox"]["AP75"] == 0.0
    np.testing.assert_allclose(scores.precision["bbox"][0.5][:, 0], 0.5)
    np.testing.assert_allclose(scores.precision["bbox"][0.75][:, 0], 0.0)
    assert len(scores.recall_thresholds) == 101


def test_masks_are_ranked_by_their_mask_scores_boxes_by_theirs():
    """Two detections of one object: the first has the sure class and a wrong mask, the second a
    right mask. Ranked by class scores the wrong mask comes first (segm AP50 ½, as in
    test_hand_computed_ap50); by mask_scores the right one does (1). Boxes keep `scores`."""
    truth_mask = torch.zeros(1, 100, 100, dtype=torch.uint8)
    truth_mask[0, 10:50, 10:50] = 1
    target = {"boxes": torch.tensor([[10.0, 10.0, 50.0, 50.0]]), "labels": torch.tensor([1]),
              "masks": truth_mask}
    masks = torch.zeros(2, 1, 100, 100)
    masks[0, 0, 60:90, 60:90] = 0.6  # the wrong place
    masks[1, 0, 10:50, 10:50] = 0.9
    prediction = {"boxes": torch.tensor([[10.0, 10.0, 50.0, 50.0], [12.0, 10.0, 50.0, 50.0]]),
                  "labels": torch.tensor([1, 1]), "scores": torch.tensor([0.95, 0.9]),
                  "masks": masks}
    by_class = coco_evaluate([target], [(100, 100)], [prediction], ["box"],
                             iou_types=("bbox", "segm"))
    ranked = {**prediction, "mask_scores": torch.tensor([0.95 * 0.6, 0.9 * 0.9])}
    by_mask = coco_evaluate([target], [(100, 100)], [ranked], ["box"], iou_types=("bbox", "segm"))
    assert by_class.stats["segm"]["AP50"] == pytest.approx(0.5)
    assert by_mask.stats["segm"]["AP50"] == pytest.approx(1.0)
    assert by_mask.stats["bbox"] == by_class.stats["bbox"]
    assert [r["score"] for r in predictions_to_coco([ranked], [1], iou_types=("segm",))] == \
        pytest.approx([0.57, 0.81])
    assert [r["score"] for r in predictions_to_coco([ranked], [1], iou_types=("bbox", "segm"))] \
        == pytest.approx([0.95, 0.9])  # a combined file keeps one score per detection: the box's


def test_per_class_ap_and_classes_without_truth():
    truth = [{"boxes": torch.tensor([[5.0, 5.0, 45.0, 45.0]]), "labels": torch.tensor([1]),
              "image_id": 1},
             {"boxes": torch.tensor([[5.0, 5.0, 45.0, 45.0]]), "labels": torch.tensor([2]),
              "image_id": 2}]
    predictions = [{"boxes": torch.tensor([[5.0, 5.0, 45.0, 45.0]]), "labels": torch.tensor([1]),
                    "scores": torch.tensor([0.9])},
                   {"boxes": torch.tensor([[50.0, 50.0, 60.0, 60.0]]), "labels": torch.tensor([2]),
                    "scores": torch.tensor([0.8])}]
    scores = coco_evaluate(truth, [(64, 64)] * 2, predictions, ["a", "b", "c"])
    per_class = scores.per_class["bbox"]
    assert per_class["a"] == pytest.approx(1.0) and per_class["b"] == 0.0
    assert math.isnan(per_class["c"])  # no ground truth of c
    assert scores.stats["bbox"]["AP"] == pytest.approx(0.5)
    assert np.isnan(scores.precision["bbox"][0.5][:, 2]).all()


def test_no_detections_and_empty_images():
    truth = [{"boxes": torch.tensor([[5.0, 5.0, 45.0, 45.0]]), "labels": torch.tensor([1]),
              "image_id": 1},
             {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
              "image_id": 2}]
    nothing = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
               "scores": torch.zeros(0)}
    scores = coco_evaluate(truth, [(64, 64)] * 2, [nothing, nothing], ["a"])
    assert scores.stats["bbox"]["AP"] == 0.0 and scores.stats["bbox"]["AR100"] == 0.0
    assert scores.per_class["bbox"] == {"a": 0.0} and scores.num_detections == 0
    # An empty image beside a perfectly detected one changes nothing.
    hit = {"boxes": truth[0]["boxes"], "labels": truth[0]["labels"], "scores": torch.tensor([1.0])}
    scores = coco_evaluate(truth, [(64, 64)] * 2, [hit, nothing], ["a"])
    assert scores.stats["bbox"]["AP"] == pytest.approx(1.0)
    # No truth and no detections anywhere: undefined (NaN), not a crash.
    scores = coco_evaluate(truth[1:], [(64, 64)], [nothing], ["a"])
    assert math.isnan(scores.stats["bbox"]["AP"])


def test_bad_input_is_one_line():
    target = {"boxes": torch.tensor([[5.0, 5.0, 45.0, 45.0]]), "labels": torch.tensor([1]),
              "image_id": 1}
    for label in (0, 3):
        bad = {"boxes": target["boxes"], "labels": torch.tensor([label]),
               "scores": torch.tensor([0.5])}
        with pytest.raises(CnnkitError, match=r"labels must be 1\.\.2") as err:
            coco_evaluate([target], [(64, 64)], [bad], ["a", "b"])
        assert "\n" not in str(err.value)
    ok = {"boxes": target["boxes"], "labels": torch.tensor([1]), "scores": torch.tensor([0.5])}
    with pytest.raises(CnnkitError, match="needs ground-truth masks"):
        coco_evaluate([target], [(64, 64)], [{**ok, "masks": torch.ones(1, 1, 64, 64)}], ["a"],
                      iou_types=("segm",))
    with pytest.raises(CnnkitError, match="unknown iou type 'box'"):
        coco_evaluate([target], [(64, 64)], [ok], ["a"], iou_types=("box",))
    with pytest.raises(CnnkitError, match="1 targets but 2 predictions"):
        coco_evaluate([target], [(64, 64)], [ok, ok], ["a"])


# pycocotools 2.0.11's decode predates numpy 2's __array__(copy=...) protocol and says so.
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_mask_rle_round_trip(tmp_path):
    g = torch.Generator().manual_seed(5)
    probabilities = torch.rand(3, 1, 37, 53, generator=g)  # odd sizes: row/column order shows
    prediction = {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 3),
                  "labels": torch.tensor([1, 2, 1]), "scores": torch.tensor([0.9, 0.8, 0.7]),
                  "masks": probabilities}
    results = predictions_to_coco([prediction], [9], iou_types=("segm",))
    assert [r["category_id"] for r in results] == [1, 2, 1] and "bbox" not in results[0]
    path = write_coco_json(tmp_path / "dt.json", results)
    for result, mask in zip(json.loads(path.read_text()), probabilities[:, 0]):
        assert isinstance(result["segmentation"]["counts"], str)
        decoded = mask_utils.decode(result["segmentation"])
        np.testing.assert_array_equal(decoded, (mask > 0.5).numpy().astype(np.uint8))


def test_coco_constants():
    assert len(COCO_CATEGORY_NAMES) == 91 and COCO_CATEGORY_NAMES.count("N/A") == 10
    assert COCO_CATEGORY_NAMES[1] == "person" and COCO_CATEGORY_NAMES[90] == "toothbrush"
    assert COCO_CATEGORY_NAMES[44] == "bottle" and COCO_CATEGORY_NAMES[72] == "tv"
    # pycocotools' own default sigmas, exactly.
    defaults = COCOeval(iouType="keypoints").params.kpt_oks_sigmas
    assert np.array_equal(np.array(COCO_PERSON_KPT_SIGMAS), defaults)
    assert len(COCO_PERSON_KEYPOINT_NAMES) == 17 and len(COCO_PERSON_SKELETON) == 19
    assert all(0 <= a < 17 and 0 <= b < 17 for a, b in COCO_PERSON_SKELETON)
    target, _ = _keypoint_case()
    category = targets_to_coco([target], [(120, 120)], ["person"])["categories"][0]
    assert category["skeleton"][0] == [16, 14] and category["keypoints"][0] == "nose"
