"""Detection figures: boxes, "name score" labels, translucent instance masks and keypoint
skeletons drawn into an image; a grid of predictions over the ground truth; and COCO's
precision–recall curves.

Boxes are x1y1x2y2 in torchvision's continuous coordinates (pixel i spans [i, i + 1)), labels
1..K name classes[l - 1] (0 is the background), as everywhere in cnnkit's detection code.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from matplotlib import patheffects
from PIL import Image, ImageDraw, ImageFont

from cnnkit.utils import CnnkitError
from cnnkit.viz.plots import plt, save_figure

MASK_ALPHA = 0.45  # share of the instance colour over the image inside its mask
PANEL_INCHES = 3.0  # each image's square cell in plot_detections
TRUTH_COLOUR = "white"  # ground-truth boxes: thin, dashed, outlined in black to show on any image
SHOWN_SCORE = 0.5  # detections drawn and printed from this score, unless the model says


def shown_score(model) -> float:
    """The score from which figures and `cnnkit predict` show a model's detections: its
    `shown_score` (YOLOv8: 0.25) or SHOWN_SCORE."""
    return getattr(model, "shown_score", SHOWN_SCORE)


def _np(x, dtype=None) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        # numpy has no bfloat16: autocast outputs are widened first.
        x = (x.float() if x.dtype in (torch.bfloat16, torch.float16) else x).numpy()
    return np.asarray(x, dtype=dtype)


def instance_colours(count: int) -> np.ndarray:
    """(count, 3) uint8 RGB: tab10 cycling, so that neighbouring instances (even of one class)
    are told apart, as torchvision's draw_segmentation_masks colours each mask."""
    cmap = plt.get_cmap("tab10")
    return np.array([np.array(cmap(i % cmap.N)[:3]) * 255 for i in range(count)],
                    dtype=np.uint8).reshape(count, 3)


def _rgb(image) -> np.ndarray:
    """(C, H, W) uint8 (C = 1 or 3) or float in 0..1 → (H, W, 3) uint8."""
    x = _np(image)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3 or x.shape[0] not in (1, 3):
        raise CnnkitError(f"image must be (3, H, W) or (1, H, W), got {x.shape}")
    if x.dtype != np.uint8:
        x = (np.clip(x.astype(np.float64), 0, 1) * 255).round().astype(np.uint8)
    return np.ascontiguousarray(np.repeat(x, 3, axis=0).transpose(1, 2, 0) if x.shape[0] == 1
                                else x.transpose(1, 2, 0))


def _font(size: int):
    try:  # Pillow >= 10.1 scales its built-in font
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def draw_detections(image, boxes, labels, classes: Sequence[str], scores=None, masks=None,
                    keypoints=None, skeleton: Sequence[tuple[int, int]] | None = None,
                    score_threshold: float = 0.5) -> np.ndarray:
    """Draw the instances whose score is at least `score_threshold` (all without scores) into
    `image` (3, H, W) uint8; return (H, W, 3) uint8 RGB.

    Each instance has its own colour for its box, its "name 0.93" label, its mask (M, H, W) or
    (M, 1, H, W), probabilities > 0.5 tinted) and its keypoints (M, J, 3), drawn where the
    visibility (third value) is > 0 and joined by `skeleton`'s 0-based index pairs.
    """
    rgb = _rgb(image)
    height, width = rgb.shape[:2]
    boxes = _np(boxes, np.float64).reshape(-1, 4)
    labels = _np(labels, np.int64).reshape(-1)
    if len(labels) != len(boxes):
        raise CnnkitError(f"{len(boxes)} boxes but {len(labels)} labels")
    bad = labels[(labels < 1) | (labels > len(classes))]
    if len(bad):
        raise CnnkitError(f"label {int(bad[0])} names no class; labels must be 1..{len(classes)}")
    shown = np.arange(len(boxes))
    if scores is not None:
        scores = _np(scores, np.float64).reshape(-1)
        shown = shown[scores >= score_threshold]
    colours = instance_colours(len(boxes))
    out = rgb.astype(np.float32)
    if masks is not None:
        masks = _np(masks)
        masks = masks[:, 0] if masks.ndim == 4 else masks  # (M, 1, H, W) → (M, H, W)
        if masks.shape[1:] != (height, width):
            raise CnnkitError(f"masks are {masks.shape[1:]}, the image {(height, width)}")
        for i in shown:
            inside = masks[i] > 0.5
            out[inside] = (1 - MASK_ALPHA) * out[inside] + MASK_ALPHA * colours[i]
    picture = Image.fromarray(out.round().astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    line = max(1, round(max(height, width) / 250))  # 2 px at 500 px, 1 px on small images
    for i in shown:
        x1, y1, x2, y2 = boxes[i]
        # PIL's rectangle includes both corners; the box's right/bottom edges are exclusive.
        draw.rectangle([x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)], outline=tuple(colours[i]),
                       width=line)
    if keypoints is not None:
        _draw_keypoints(draw, _np(keypoints, np.float64), shown, colours, skeleton or (), line)
    font = _font(max(9, round(max(height, width) / 40)))
    for i in shown:
        text = classes[labels[i] - 1] + ("" if scores is None else f" {scores[i]:.2f}")
        _draw_label(draw, text, boxes[i], colours[i], font)
    return np.asarray(picture)


def _draw_keypoints(draw, keypoints: np.ndarray, shown, colours, skeleton, line: int) -> None:
    """Skeleton segments between visible keypoints, then a dot on each visible keypoint."""
    radius = line + 1
    for i in shown:
        points, colour = keypoints[i], tuple(colours[i])  # (J, 3)
        visible = points[:, 2] > 0
        for a, b in skeleton:
            if a < len(points) and b < len(points) and visible[a] and visible[b]:
                draw.line([tuple(points[a, :2]), tuple(points[b, :2])], fill=colour, width=line)
        for x, y in points[visible, :2]:
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=colour,
                         outline=(255, 255, 255))


def _draw_label(draw, text: str, box: np.ndarray, colour: np.ndarray, font) -> None:
    """The label on a filled tab just above the box (inside its top when there is no room)."""
    x1, y1 = float(box[0]), float(box[1])
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    w, h = right - left + 2, bottom - top + 2
    y = y1 - h if y1 - h >= 0 else y1
    draw.rectangle([x1, y, x1 + w, y + h], fill=tuple(colour))
    # Black text on light colours, white on dark ones (ITU-R BT.601 luma).
    luma = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
    draw.text((x1 + 1 - left, y + 1 - top), text, font=font,
              fill=(0, 0, 0) if luma > 140 else (255, 255, 255))


# --- figures ---

def plot_detections(images: Sequence, predictions: Sequence[dict], targets: Sequence[dict] | None,
                    classes: Sequence[str], path, *, skeleton=None, score_threshold: float = 0.5,
                    columns: int = 4, names: Sequence[str] | None = None) -> Path:
    """A grid of images (each (3, H, W) uint8) with their predictions drawn by draw_detections
    (score ≥ `score_threshold`) and, when `targets` are given, the true boxes as thin dashed
    outlines. Cells are PANEL_INCHES square: the PNG is 300·columns × 300·rows pixels."""
    n = len(images)
    if n == 0:
        raise CnnkitError("plot_detections got no images")
    if len(predictions) != n or (targets is not None and len(targets) != n):
        raise CnnkitError(f"{n} images but {len(predictions)} predictions"
                          + ("" if targets is None else f" and {len(targets)} targets"))
    cols = min(columns, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(PANEL_INCHES * cols, PANEL_INCHES * rows),
                             squeeze=False, layout="constrained")
    for ax in axes.flat[n:]:
        ax.axis("off")
    for i, (ax, pred) in enumerate(zip(axes.flat, predictions)):
        scores = pred.get("scores")
        ax.imshow(draw_detections(images[i], pred["boxes"], pred["labels"], classes, scores=scores,
                                  masks=pred.get("masks"), keypoints=pred.get("keypoints"),
                                  skeleton=skeleton, score_threshold=score_threshold))
        found = (len(_np(pred["labels"]).reshape(-1)) if scores is None
                 else int((_np(scores) >= score_threshold).sum()))
        title = f"{found} found"
        if targets is not None:
            truth = _np(targets[i]["boxes"], np.float64).reshape(-1, 4)
            for x1, y1, x2, y2 in truth:  # imshow centres pixel i on i: edges sit at i - 0.5
                ax.add_patch(plt.Rectangle(
                    (x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, edgecolor=TRUTH_COLOUR,
                    linestyle="--", linewidth=1.0,
                    path_effects=[patheffects.withStroke(linewidth=2.2, foreground="black")]))
            title += f", {len(truth)} true"
        ax.set_title(title if names is None else f"{names[i]}: {title}", fontsize=9)
        ax.axis("off")
    truth_note = ", ground truth dashed" if targets is not None else ""
    fig.suptitle(f"predictions with score ≥ {score_threshold:g}{truth_note}", fontsize=10)
    return save_figure(fig, path, title="detections on test images")


def plot_pr_curves(scores, path, iou_type: str = "bbox", *, max_legend: int = 20) -> Path:
    """COCO precision–recall curves of a CocoScores (cnnkit.train.coco_eval): left, the mean
    over classes at IoU 0.5 and 0.75 (their mean over recall is AP50 / AP75); right, each
    class at IoU 0.5 with its own AP50. Classes without ground truth are left out."""
    if iou_type not in scores.precision:
        raise CnnkitError(f"no {iou_type} scores to plot; evaluated: "
                          f"{', '.join(scores.precision) or 'nothing'}")
    recall, curves, stats = scores.recall_thresholds, scores.precision[iou_type], \
        scores.stats[iou_type]
    fig, (overall, per_class) = plt.subplots(1, 2, figsize=(12, 4.5), layout="constrained")
    for iou, style, stat in ((0.5, "-", "AP50"), (0.75, "--", "AP75")):
        precision = curves[iou]  # (R, K), NaN columns for classes without ground truth
        present = ~np.isnan(precision).all(axis=0)
        if present.any():
            overall.plot(recall, precision[:, present].mean(axis=1), style,
                         label=f"IoU {iou:g} ({stat} {stats[stat]:.3f})")
    precision = curves[0.5]
    present = ~np.isnan(precision).all(axis=0)
    colours = plt.get_cmap("tab20" if present.sum() > 10 else "tab10")
    for k in np.flatnonzero(present):
        per_class.plot(recall, precision[:, k], color=colours(k % colours.N), linewidth=1.2,
                       label=f"{scores.classes[k]} ({precision[:, k].mean():.3f})")
    missing = len(scores.classes) - int(present.sum())
    for ax, title in ((overall, f"{iou_type}: all classes (mean precision over classes)"),
                      (per_class, f"{iou_type}: per class at IoU 0.5 (AP50)"
                       + (f", {missing} without ground truth left out" if missing else ""))):
        ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        handles = ax.get_legend_handles_labels()[0]
        if 0 < len(handles) <= max_legend:
            ax.legend(loc="lower left", fontsize=8)
    return save_figure(fig, path, title=f"{iou_type} precision-recall curves")
