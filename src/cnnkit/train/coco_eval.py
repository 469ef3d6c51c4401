"""COCO evaluation of boxes, instance masks and keypoints with pycocotools' COCOeval.

cnnkit's samples use torchvision's detection format (a target: boxes x1y1x2y2, labels 1..K,
optional masks (N, H, W) and keypoints (N, J, 3); a prediction: boxes, labels, scores, optional
masks (M, 1, H, W) and keypoints (M, J, 3)). This module only converts them to the COCO ground
truth and results formats (https://cocodataset.org/#format-data, #format-results) and reads
COCOeval's arrays: every AP and AR is pycocotools' own, the reference code of the COCO
challenge (Lin et al. 2014, "Microsoft COCO: Common Objects in Context",
https://cocodataset.org/#detection-eval; keypoints: OKS,
https://cocodataset.org/#keypoints-eval), never re-implemented here.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from cnnkit.utils import CnnkitError, atomic_path

IOU_TYPES = ("bbox", "segm", "keypoints")
# Names of COCOeval.stats, in the order summarize() prints them.
DET_STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl",
                  "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
KPT_STAT_NAMES = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
MASK_THRESHOLD = 0.5  # mask probability → binary mask, as torchvision's references do
PR_IOUS = (0.5, 0.75)  # the IoU thresholds whose precision–recall curves CocoScores keeps

# --- COCO constants ---

# torchvision's COCO label names (models/detection/_meta.py): label l of a torchvision COCO
# checkpoint is COCO category id l, named COCO_CATEGORY_NAMES[l]; "N/A" marks the 10 ids of
# 1..90 that the 2014 paper defined but the released annotations never use.
COCO_CATEGORY_NAMES = [
    "__background__", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train",
    "truck", "boat", "traffic light", "fire hydrant", "N/A", "stop sign", "parking meter",
    "bench", "bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra",
    "giraffe", "N/A", "backpack", "umbrella", "N/A", "N/A", "handbag", "tie", "suitcase",
    "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove",
    "skateboard", "surfboard", "tennis racket", "bottle", "N/A", "wine glass", "cup", "fork",
    "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot",
    "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "N/A",
    "dining table", "N/A", "N/A", "toilet", "N/A", "tv", "laptop", "mouse", "remote",
    "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "N/A",
    "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
]
COCO_PERSON_KEYPOINT_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)
# The person skeleton of person_keypoints_*.json, made 0-based (the JSON's is 1-based; the
# category written by targets_to_coco gets +1 back).
COCO_PERSON_SKELETON = tuple((a - 1, b - 1) for a, b in (
    (16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7), (6, 8), (7, 9),
    (8, 10), (9, 11), (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7)))
# OKS falloff per keypoint (Ronchi & Perona 2017, "Benchmarking and Error Diagnosis in
# Multi-Instance Pose Estimation"); computed as pycocotools' setKpParams does, bit for bit.
COCO_PERSON_KPT_SIGMAS = tuple(float(s) for s in np.array(
    [.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87, .89, .89]) / 10.0)


# --- conversion to the COCO formats ---

def _np(x, dtype=None) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        # numpy has no bfloat16: autocast outputs are widened first.
        x = (x.float() if x.dtype in (torch.bfloat16, torch.float16) else x).numpy()
    return np.asarray(x, dtype=dtype)


def _category_ids(category_ids: Sequence[int] | None, num_classes: int) -> list[int]:
    if category_ids is None:
        return list(range(1, num_classes + 1))
    ids = [int(c) for c in category_ids]
    if len(ids) != num_classes or len(set(ids)) != num_classes:
        raise CnnkitError(f"category_ids must be {num_classes} distinct ids (one per class), "
                          f"got {ids[:12]}")
    return ids


def _labels(labels, count: int, num_classes: int | None, what: str) -> np.ndarray:
    labels = _np(labels, np.int64).reshape(-1)
    if len(labels) != count:
        raise CnnkitError(f"{what} has {count} boxes but {len(labels)} labels")
    high = num_classes if num_classes is not None else np.iinfo(np.int64).max
    bad = labels[(labels < 1) | (labels > high)]
    if len(bad):
        span = f"1..{num_classes}" if num_classes is not None else ">= 1"
        raise CnnkitError(f"{what} has label {int(bad[0])}; labels must be {span} "
                          f"(0 is the background)")
    return labels


def _xywh(boxes) -> np.ndarray:
    """(N, 4) x1y1x2y2 → COCO's (N, 4) x, y, width, height, in float64."""
    boxes = _np(boxes, np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


def _keypoints(keypoints, count: int, what: str) -> np.ndarray:
    keypoints = _np(keypoints, np.float64)
    if keypoints.ndim != 3 or keypoints.shape[0] != count or keypoints.shape[2] != 3:
        raise CnnkitError(f"{what}: keypoints must be ({count}, J, 3), got {keypoints.shape}")
    return keypoints


def _encode_masks(masks, height: int, width: int, what: str) -> list[dict]:
    """(N, H, W) or (N, 1, H, W) probabilities or 0/1 masks → compressed RLEs with str counts."""
    masks = _np(masks)
    if masks.ndim == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]  # torchvision's (M, 1, H, W) → (M, H, W)
    if masks.ndim != 3 or masks.shape[1:] != (height, width):
        raise CnnkitError(f"{what}: masks must be (N, {height}, {width}) for its image, got "
                          f"{masks.shape}")
    # pycocotools encodes column-major uint8 (H, W, N) stacks.
    binary = np.asfortranarray((masks > MASK_THRESHOLD).astype(np.uint8).transpose(1, 2, 0))
    rles = mask_utils.encode(binary) if len(masks) else []
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")  # bytes are not JSON
    return rles


def targets_to_coco(targets: Sequence[dict], image_sizes: Sequence[tuple[int, int]],
                    classes: Sequence[str], category_ids: Sequence[int] | None = None,
                    keypoint_names: Sequence[str] | None = None,
                    skeleton: Sequence[tuple[int, int]] | None = None) -> dict:
    """The COCO ground-truth dict of `targets` (one per image, with `image_sizes` (H, W)).

    Each object becomes an annotation with bbox (xywh), area (the mask's pixel count when masks
    exist, else the box's), iscrowd, segmentation (RLE) from masks and keypoints (x, y, v
    flattened, num_keypoints = labelled ones) from keypoints. Annotation ids start at 1 (COCOeval
    reads id 0 as "unmatched"). Categories carry keypoint names and the skeleton (0-based pairs
    in, 1-based in the dict as in COCO's JSON) when the targets have keypoints.
    """
    if len(image_sizes) != len(targets):
        raise CnnkitError(f"{len(targets)} targets but {len(image_sizes)} image sizes")
    cat_ids = _category_ids(category_ids, len(classes))
    images, annotations, num_joints = [], [], None
    for i, (target, size) in enumerate(zip(targets, image_sizes)):
        image_id = int(target.get("image_id", i + 1))
        height, width = int(size[0]), int(size[1])
        images.append({"id": image_id, "height": height, "width": width})
        boxes = _xywh(target["boxes"])
        labels = _labels(target["labels"], len(boxes), len(classes), f"target {i}")
        crowd = _np(target.get("iscrowd", np.zeros(len(boxes))), np.int64).reshape(-1)
        rles = (_encode_masks(target["masks"], height, width, f"target {i}")
                if target.get("masks") is not None else None)
        keypoints = target.get("keypoints")
        if keypoints is not None:
            keypoints = _keypoints(keypoints, len(boxes), f"target {i}")  # (N, J, 3)
            num_joints = keypoints.shape[1]
        for j in range(len(boxes)):
            ann = {"id": len(annotations) + 1, "image_id": image_id,
                   "category_id": cat_ids[labels[j] - 1], "bbox": boxes[j].tolist(),
                   "area": float(boxes[j, 2] * boxes[j, 3]), "iscrowd": int(crowd[j])}
            if rles is not None:
                ann["segmentation"] = rles[j]
                ann["area"] = float(mask_utils.area(rles[j]))
            if keypoints is not None:
                ann["keypoints"] = keypoints[j].reshape(-1).tolist()
                ann["num_keypoints"] = int((keypoints[j, :, 2] > 0).sum())
            annotations.append(ann)
    if len({image["id"] for image in images}) != len(images):
        raise CnnkitError("targets repeat an image_id; every image needs its own")
    categories = [{"id": c, "name": name, "supercategory": "object"}
                  for c, name in zip(cat_ids, classes)]
    if num_joints is not None:
        names, pairs = _keypoint_meta(num_joints, keypoint_names, skeleton)
        for category in categories:
            category.update(keypoints=names, skeleton=[[a + 1, b + 1] for a, b in pairs])
    return {"images": images, "annotations": annotations, "categories": categories}


def _keypoint_meta(num_joints: int, names, skeleton) -> tuple[list[str], list[tuple[int, int]]]:
    person = num_joints == len(COCO_PERSON_KEYPOINT_NAMES)
    if names is None:
        names = COCO_PERSON_KEYPOINT_NAMES if person else [f"kp{j}" for j in range(num_joints)]
    if len(names) != num_joints:
        raise CnnkitError(f"{len(names)} keypoint names for {num_joints} keypoints")
    if skeleton is None:
        skeleton = COCO_PERSON_SKELETON if person else ()
    return list(names), [(int(a), int(b)) for a, b in skeleton]


def predictions_to_coco(predictions: Sequence[dict], image_ids: Sequence[int],
                        category_ids: Sequence[int] | None = None, *,
                        iou_types: Sequence[str] = ("bbox",)) -> list[dict]:
    """COCO results (one dict per detection: image_id, category_id, score, and per iou type
    bbox (xywh), segmentation (RLE of the mask > 0.5) or keypoints (flattened x, y, v)).
    The score is the prediction's "scores", or for segm alone its "mask_scores" if it has them.

    Give one iou type to get what pycocotools' loadRes expects for it: with a bbox it takes the
    box's area even for masks, which is why torchvision's references write segm results without
    one. Several types give detectron2's combined results file. Labels must be 1..K (K =
    len(category_ids)); label l becomes category_ids[l - 1] (default: l).
    """
    if len(predictions) != len(image_ids):
        raise CnnkitError(f"{len(predictions)} predictions but {len(image_ids)} image ids")
    iou_types = (iou_types,) if isinstance(iou_types, str) else tuple(iou_types)
    bad = [t for t in iou_types if t not in IOU_TYPES]
    if bad:
        raise CnnkitError(f"unknown iou type '{bad[0]}'; choose from {', '.join(IOU_TYPES)}")
    results = []
    for i, (pred, image_id) in enumerate(zip(predictions, image_ids)):
        boxes = _xywh(pred["boxes"])
        # masks alone are ranked by their own scores where the model gives them (maskness)
        score_key = "mask_scores" if iou_types == ("segm",) and "mask_scores" in pred \
            else "scores"
        scores = _np(pred[score_key], np.float64).reshape(-1)
        num_classes = None if category_ids is None else len(category_ids)
        labels = _labels(pred["labels"], len(boxes), num_classes, f"prediction {i}")
        fields = {"bbox": boxes.tolist()} if "bbox" in iou_types else {}
        if "segm" in iou_types:
            if pred.get("masks") is None:
                raise CnnkitError(f"prediction {i} has no masks for the segm evaluation")
            masks = _np(pred["masks"])
            fields["segmentation"] = _encode_masks(masks, *masks.shape[-2:], f"prediction {i}")
        if "keypoints" in iou_types:
            if pred.get("keypoints") is None:
                raise CnnkitError(f"prediction {i} has no keypoints for the keypoint evaluation")
            keypoints = _keypoints(pred["keypoints"], len(boxes), f"prediction {i}")
            fields["keypoints"] = keypoints.reshape(len(boxes), -1).tolist() if len(boxes) else []
        for j in range(len(boxes)):
            label = int(labels[j])
            record = {"image_id": int(image_id), "score": float(scores[j]),
                      "category_id": category_ids[label - 1] if category_ids else label}
            record.update({key: values[j] for key, values in fields.items()})
            results.append(record)
    return results


def write_coco_json(path, obj) -> Path:
    """Write a COCO dict or results list as JSON, atomically (temp file + os.replace)."""
    def convert(value):  # numpy scalars and arrays, RLE bytes: what json cannot write itself
        if isinstance(value, np.ndarray):
            return value.tolist()
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, bytes):
            return value.decode("ascii")
        raise TypeError(f"{type(value).__name__} is not JSON serializable")

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, default=convert))
    return Path(path)


# --- evaluation ---

@dataclass
class CocoScores:
    """COCOeval's results per iou type ("bbox", "segm", "keypoints").

    stats[t]: the summary numbers by name (DET_STAT_NAMES, KPT_STAT_NAMES), NaN where COCOeval
    says -1 (no ground truth in that area range). per_class[t]: {class: AP@[.5:.95]} over all
    areas at the largest maxDets, NaN for a class without ground truth. precision[t][iou]: the
    (R, K) precision at each of the 101 `recall_thresholds` per class (classes order) at IoU 0.5
    and 0.75, NaN for a class without ground truth. summaries[t]: summarize()'s printed lines.
    """
    classes: list[str]
    stats: dict[str, dict[str, float]] = field(default_factory=dict)
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)
    precision: dict[str, dict[float, np.ndarray]] = field(default_factory=dict)
    recall_thresholds: np.ndarray = field(default_factory=lambda: np.linspace(0, 1, 101))
    summaries: dict[str, str] = field(default_factory=dict)
    num_detections: int = 0

    def table(self) -> str:
        """The COCO summary of every iou type, then each class's AP@[.5:.95] per iou type."""
        lines = []
        for iou_type, summary in self.summaries.items():
            lines += [f"{iou_type}:", *summary.rstrip("\n").splitlines(), ""]
        types = list(self.per_class)
        lines.append(f"{'class':>16} " + " ".join(f"{t + ' AP':>12}" for t in types))
        for name in self.classes:
            lines.append(f"{name[:16]:>16} " +
                         " ".join(f"{self.per_class[t][name]:12.4f}" for t in types))
        lines.append("(nan: no ground truth of the class)")
        return "\n".join(lines)


def coco_evaluate(targets: Sequence[dict], image_sizes: Sequence[tuple[int, int]],
                  predictions: Sequence[dict], classes: Sequence[str], *,
                  iou_types: Sequence[str] = ("bbox",), category_ids: Sequence[int] | None = None,
                  kpt_sigmas: Sequence[float] | None = None,
                  keypoint_names: Sequence[str] | None = None) -> CocoScores:
    """COCO AP/AR of `predictions` against `targets` (one of each per image, same order),
    computed by pycocotools' COCOeval in memory and quietly, once per iou type.

    Keypoints use the OKS sigmas `kpt_sigmas` (default: COCO's 17 person sigmas, only for 17
    keypoints). No detections at all gives COCOeval's own zeros (AP 0 for every class that has
    ground truth): pycocotools' loadRes cannot read an empty list, so the empty results object
    is built directly.
    """
    if len(predictions) != len(targets):
        raise CnnkitError(f"{len(targets)} targets but {len(predictions)} predictions")
    iou_types = (iou_types,) if isinstance(iou_types, str) else tuple(iou_types)
    cat_ids = _category_ids(category_ids, len(classes))
    truth = targets_to_coco(targets, image_sizes, classes, cat_ids, keypoint_names)
    image_ids = [image["id"] for image in truth["images"]]
    with contextlib.redirect_stdout(io.StringIO()):  # COCO() prints "creating index..."
        coco_gt = COCO()
        coco_gt.dataset = truth
        coco_gt.createIndex()
    if "segm" in iou_types:
        _check_mask_sizes(predictions, truth["images"])
    scores = CocoScores(classes=list(classes))
    for iou_type in iou_types:
        results = predictions_to_coco(predictions, image_ids, cat_ids, iou_types=(iou_type,))
        sigmas = _sigmas(truth, results, kpt_sigmas) if iou_type == "keypoints" else None
        _check_truth(truth, iou_type)
        evaluator, summary = _run_cocoeval(coco_gt, results, iou_type, sigmas)
        _read_eval(scores, evaluator, iou_type, summary, cat_ids)
        scores.num_detections = len(results)
    return scores


def _check_truth(truth: dict, iou_type: str) -> None:
    key = {"segm": "segmentation", "keypoints": "keypoints"}.get(iou_type)
    if key and any(key not in ann for ann in truth["annotations"]):
        what = "masks" if iou_type == "segm" else "keypoints"
        raise CnnkitError(f"the {iou_type} evaluation needs ground-truth {what} on every object")


def _check_mask_sizes(predictions: Sequence[dict], images: list[dict]) -> None:
    for i, (pred, image) in enumerate(zip(predictions, images)):
        masks = pred.get("masks")
        if masks is not None and tuple(masks.shape[-2:]) != (image["height"], image["width"]):
            raise CnnkitError(f"prediction {i}: masks are {tuple(masks.shape[-2:])}, its image "
                              f"is {(image['height'], image['width'])}; paste them into the image")


def _sigmas(truth: dict, results: list[dict], kpt_sigmas) -> np.ndarray:
    """The OKS sigmas, checked against the keypoint counts of truth and predictions."""
    joints = {len(ann["keypoints"]) // 3 for ann in truth["annotations"] if "keypoints" in ann}
    predicted = {len(result["keypoints"]) // 3 for result in results}
    if len(joints | predicted) > 1:
        raise CnnkitError(f"keypoint counts differ: {sorted(joints)} in the targets, "
                          f"{sorted(predicted)} in the predictions")
    sigmas = np.asarray(COCO_PERSON_KPT_SIGMAS if kpt_sigmas is None else kpt_sigmas, np.float64)
    if joints and joints != {len(sigmas)}:
        raise CnnkitError(f"{len(sigmas)} keypoint sigmas for {joints.pop()} keypoints; pass the "
                          f"data set's kpt_sigmas (one per keypoint)")
    return sigmas


def _run_cocoeval(coco_gt: COCO, results: list[dict], iou_type: str,
                  sigmas) -> tuple[COCOeval, str]:
    """evaluate → accumulate → summarize, prints swallowed; returns the summary's text too."""
    with contextlib.redirect_stdout(io.StringIO()):
        if results:
            coco_dt = coco_gt.loadRes(results)
        else:
            coco_dt = COCO()
            coco_dt.dataset = {"images": coco_gt.dataset["images"], "annotations": [],
                               "categories": coco_gt.dataset["categories"]}
            coco_dt.createIndex()
        evaluator = COCOeval(coco_gt, coco_dt, iou_type)
        if sigmas is not None:
            evaluator.params.kpt_oks_sigmas = sigmas
        evaluator.evaluate()
        evaluator.accumulate()
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        evaluator.summarize()
    return evaluator, summary.getvalue()


def _read_eval(scores: CocoScores, evaluator: COCOeval, iou_type: str, summary: str,
               cat_ids: list[int]) -> None:
    """Name COCOeval.stats and slice eval["precision"] (T, R, K, A, M) into per-class numbers."""
    names = KPT_STAT_NAMES if iou_type == "keypoints" else DET_STAT_NAMES
    scores.stats[iou_type] = {n: float(v) if v > -1 else math.nan
                              for n, v in zip(names, evaluator.stats)}
    params = evaluator.params
    # COCOeval's K axis follows its sorted catIds; ours follows the classes.
    column = [list(params.catIds).index(c) for c in cat_ids]
    precision = evaluator.eval["precision"][:, :, column, 0, -1]  # (T, R, K): area all, max dets
    per_class = {}
    for k, name in enumerate(scores.classes):
        valid = precision[:, :, k][precision[:, :, k] > -1]  # -1: no ground truth of the class
        per_class[name] = float(valid.mean()) if valid.size else math.nan
    scores.per_class[iou_type] = per_class
    curves = {}
    for iou in PR_IOUS:
        t = int(np.argmin(np.abs(params.iouThrs - iou)))
        curves[iou] = np.where(precision[t] > -1, precision[t], np.nan)  # (R, K)
    scores.precision[iou_type] = curves
    scores.recall_thresholds = np.asarray(params.recThrs, dtype=np.float64)
    scores.summaries[iou_type] = summary
