"""COCO JSON detection annotations (https://cocodataset.org/#format-data), read and written.

One file with "images" (id, file_name, width, height), "annotations" (image_id, category_id,
bbox [x, y, w, h], iscrowd, segmentation as polygons or RLE, keypoints as J × (x, y, v)) and
"categories" (id, name, and for poses "keypoints" names and a 1-based "skeleton"). Masks are
decoded and encoded by pycocotools.mask, the reference implementation; cnnkit writes them as
compressed RLE. `read_coco` returns `Annotations`, checked by det_annotations.assemble; the other
formats and `convert` are in det_formats.py.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from cnnkit.data.det_annotations import (BOX_TOLERANCE, Annotations, ImageEntry, ObjectEntry,
                                         Problems, assemble)
from cnnkit.data.detection import DetectionDataset
from cnnkit.utils import CnnkitError, atomic_write_text


def read_coco(path: str | Path, *, skip_bad: bool = False) -> Annotations:
    """The images, objects and categories of a COCO JSON file (instances or person_keypoints)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CnnkitError(f"COCO file {path} not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CnnkitError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("categories"), list):
        raise CnnkitError(f"{path}: a COCO file is one object with the lists \"images\", "
                          f"\"annotations\" and \"categories\"")
    problems, name = Problems(skip_bad), path.name
    categories = _coco_categories(data["categories"], name)
    labels = {c["id"]: label for label, c in enumerate(categories, 1)}
    posed = [c for c in categories if c.get("keypoints")]
    names = tuple(posed[0]["keypoints"]) if posed else None
    if any(tuple(c["keypoints"]) != names for c in posed):
        raise CnnkitError(f"{name}: categories name different keypoints; cnnkit takes one set")
    # COCO numbers skeleton joints from 1 (the keypoint list's order); cnnkit from 0.
    skeleton = [(a - 1, b - 1) for a, b in posed[0].get("skeleton", [])] if posed else None
    images = {}
    for i, raw in enumerate(data["images"]):
        where = f"{name}, image #{i} (id {raw.get('id') if isinstance(raw, dict) else '?'})"
        try:
            entry = ImageEntry(str(raw["file_name"]), _positive(raw["height"]),
                               _positive(raw["width"]), int(raw["id"]), where)
        except (KeyError, TypeError, ValueError):
            problems(where, "an image needs id, file_name and positive integer width and height")
            continue
        if entry.image_id in images:
            problems(where, f"image id {entry.image_id} is listed twice")
            continue
        images[entry.image_id] = entry
    objects = []
    for i, raw in enumerate(data.get("annotations") or []):
        where = f"{name}, annotation #{i} (id {raw.get('id') if isinstance(raw, dict) else '?'})"
        try:
            x, y, w, h = (float(v) for v in raw["bbox"])
            if not all(isinstance(raw[k], (int, str)) for k in ("image_id", "category_id")):
                raise TypeError("ids are numbers")
            objects.append(ObjectEntry(raw["image_id"], raw["category_id"], (x, y, x + w, y + h),
                                       where, int(raw.get("iscrowd", 0)),
                                       raw.get("segmentation") or None, raw.get("keypoints")))
        except (KeyError, TypeError, ValueError, AttributeError):
            problems(where, "an annotation needs image_id, category_id and bbox [x, y, w, h]")
    return assemble(images, objects, labels, classes=[str(c["name"]) for c in categories],
                    category_ids=[c["id"] for c in categories], problems=problems,
                    decode_mask=decode_segmentation, keypoint_names=names, skeleton=skeleton)


def _positive(value) -> int:
    # JSON has only numbers: 640.0 is a fine width, 640.5 and 0 are not.
    if int(value) != value or value < 1:
        raise ValueError(value)
    return int(value)


def _coco_categories(raw: list, name: str) -> list[dict]:
    categories = []
    for i, c in enumerate(raw):
        if not isinstance(c, dict) or not isinstance(c.get("id"), int) or "name" not in c:
            raise CnnkitError(f"{name}, category #{i}: a category needs an integer id and a name")
        categories.append(c)
    ids = [c["id"] for c in categories]
    if len(set(ids)) != len(ids):
        raise CnnkitError(f"{name}: category ids {sorted(ids)} repeat one")
    # Labels 1..K follow the ids' order (torchvision's and detectron2's contiguous mapping).
    return sorted(categories, key=lambda c: c["id"])


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """uint8 (height, width) of a COCO segmentation: polygons [[x, y, ...], ...], uncompressed
    RLE {"size", "counts": [...]}, or compressed RLE {"size", "counts": "..."} (pycocotools'
    COCO.annToRLE). ValueError, saying what is wrong, for a malformed one."""
    if isinstance(segmentation, list):
        polygons = [p for p in segmentation if isinstance(p, list)]
        if len(polygons) != len(segmentation) or any(
                len(p) < 6 or len(p) % 2 or not all(isinstance(v, (int, float)) for v in p)
                for p in polygons):
            raise ValueError("a polygon must be a list of at least 3 (x, y) pairs")
        xy = np.concatenate([np.asarray(p, dtype=np.float64) for p in polygons]).reshape(-1, 2)
        t = BOX_TOLERANCE
        if (xy < -t).any() or (xy[:, 0] > width + t).any() or (xy[:, 1] > height + t).any():
            raise ValueError(f"polygon lies outside the {width}×{height} image")
        return _decode(mask_utils.merge(mask_utils.frPyObjects(polygons, height, width)))
    if not isinstance(segmentation, dict) or "counts" not in segmentation:
        raise ValueError("segmentation must be polygons or an RLE {\"size\", \"counts\"}")
    size = segmentation.get("size")
    if not isinstance(size, list) or len(size) != 2:
        raise ValueError("an RLE needs \"size\": [height, width]")
    if list(size) != [height, width]:
        raise ValueError(f"mask is {size[1]}×{size[0]} (RLE size [h, w] = {size}) but the image "
                         f"is {width}×{height}")
    counts = segmentation["counts"]
    if isinstance(counts, list):
        if sum(counts) != height * width or min(counts, default=0) < 0:
            raise ValueError(f"RLE counts add up to {sum(counts)}, not height × width = "
                             f"{height * width}")
        return _decode(mask_utils.frPyObjects(segmentation, height, width))
    try:
        return _decode({"size": size, "counts": counts})
    except (ValueError, TypeError) as err:
        raise ValueError(f"cannot decode the RLE ({err})") from None


def _decode(rle: dict) -> np.ndarray:
    # pycocotools 2.0.11's Masks.__array__ predates numpy 2's copy keyword: a harmless warning.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(rle)


def encode_mask(mask: np.ndarray) -> dict:
    """A 0/1 (H, W) mask as compressed COCO RLE, JSON-ready."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def write_coco(ann: Annotations | DetectionDataset, path: str | Path) -> Path:
    """One COCO JSON file: boxes, masks (compressed RLE), keypoints, categories."""
    ann = ann.annotations() if isinstance(ann, DetectionDataset) else ann
    categories = [{"id": cid, "name": name, "supercategory": name}
                  for cid, name in zip(ann.category_ids, ann.classes)]
    if ann.keypoint_names is not None:
        for c in categories:  # one keypoint set, given to every category
            c.update(keypoints=list(ann.keypoint_names),
                     skeleton=[[a + 1, b + 1] for a, b in ann.skeleton or []])
    images, annotations = [], []
    for entry, t in zip(ann.images, ann.targets):
        images.append({"id": entry.image_id, "file_name": entry.file_name,
                       "width": entry.width, "height": entry.height})
        for n, box in enumerate(t["boxes"].double().tolist()):
            x1, y1, x2, y2 = box
            # Rounded to 1/10000 px, far below any annotation's accuracy: the file stays small.
            record = {"id": len(annotations) + 1, "image_id": entry.image_id,
                      "category_id": ann.category_ids[int(t["labels"][n]) - 1],
                      "bbox": [round(v, 4) for v in (x1, y1, x2 - x1, y2 - y1)],
                      "area": round((x2 - x1) * (y2 - y1), 4), "iscrowd": int(t["iscrowd"][n])}
            if "masks" in t:
                mask = t["masks"][n].numpy()
                record.update(segmentation=encode_mask(mask), area=int(mask.sum()))
            if "keypoints" in t:
                kp = t["keypoints"][n].double()
                record.update(keypoints=[round(v, 4) for v in kp.reshape(-1).tolist()],
                              num_keypoints=int((kp[:, 2] > 0).sum()))
            annotations.append(record)
    data = {"images": images, "annotations": annotations, "categories": categories}
    atomic_write_text(path, json.dumps(data, separators=(",", ":")))
    return Path(path)
