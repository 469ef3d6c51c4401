"""Segmentation metrics: a K×K confusion matrix over batches → pixel accuracy, per-class IoU and
Dice, their means; and the ISBI 2012 challenge's Rand and information scores (scikit-image).

The confusion-matrix scores are the standard ones (Long, Shelhamer, Darrell 2015, "Fully
Convolutional Networks", §5: pixel accuracy, mean IU) and are tested against scikit-learn; the
ISBI scores are scikit-image's, never re-implemented here.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch


class SegmentationScores:
    """Accumulates the confusion matrix of (prediction, truth) pixels; void pixels are skipped.

    `reduce_sum` (a tensor → summed-over-ranks tensor function, as cnnkit.train.metrics.evaluate
    takes) makes the scores those of every rank's pixels together: the counts are summed, never
    the ratios. The sum is taken once, at the first score read after an update, so every rank must
    read (it is a collective).
    """

    def __init__(self, num_classes: int, *, ignore_index: int = 255,
                 reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.num_classes, self.ignore_index, self.reduce_sum = num_classes, ignore_index, reduce_sum
        # int64 counts: a float32 sum would stop counting single pixels past 2^24 (≈ 350 CamVid
        # frames at 240×180).
        self._local = torch.zeros(num_classes * num_classes, dtype=torch.int64)
        self._total: torch.Tensor | None = None  # the reduced matrix, until the next update

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: prediction as class indices (B, H, W) or logits (B, K, H, W); target
        int64 (B, H, W) with ignore_index on void pixels."""
        if prediction.dim() == target.dim() + 1:  # logits (B, K, H, W) → (B, H, W)
            prediction = prediction.argmax(1)
        if prediction.shape != target.shape:
            raise ValueError(f"prediction {tuple(prediction.shape)} and target "
                             f"{tuple(target.shape)} differ in shape")
        k = self.num_classes
        labelled = target != self.ignore_index
        truth, predicted = target[labelled].long(), prediction[labelled].long()
        # An out-of-range index would land silently in another cell of the flattened matrix.
        if len(truth) and not (0 <= truth.min() and truth.max() < k and 0 <= predicted.min()
                               and predicted.max() < k):
            raise ValueError(f"class indices must be in 0..{k - 1} (or {self.ignore_index} in "
                             f"the target)")
        # Row = true class, column = predicted: one bincount over the pair index.
        self._local += torch.bincount(truth * k + predicted, minlength=k * k).cpu()
        self._total = None

    @property
    def confusion(self) -> torch.Tensor:
        """int64 (K, K): rows are true classes, columns predicted ones (sklearn's layout)."""
        if self._total is None:
            # A clone: an in-place all_reduce must not add the other ranks into our own counts.
            total = self._local if self.reduce_sum is None else self.reduce_sum(self._local.clone())
            self._total = total.cpu().view(self.num_classes, self.num_classes)
        return self._total

    @property
    def count(self) -> int:
        """Labelled pixels seen."""
        return int(self.confusion.sum())

    @property
    def pixel_accuracy(self) -> float:
        return _ratio(self.confusion.diag().sum(), self.confusion.sum()).item()

    @property
    def iou(self) -> torch.Tensor:
        """float64 (K,): TP / (TP + FP + FN) per class; NaN for a class in neither truth nor
        prediction (it has no IoU, and must not count as 0 or 1 in the mean)."""
        tp, fp, fn = self._counts()
        return _ratio(tp, tp + fp + fn)

    @property
    def miou(self) -> float:
        return torch.nanmean(self.iou).item()

    @property
    def dice(self) -> torch.Tensor:
        """float64 (K,): 2 TP / (2 TP + FP + FN) per class (= F1); NaN as for iou."""
        tp, fp, fn = self._counts()
        return _ratio(2 * tp, 2 * tp + fp + fn)

    @property
    def mean_dice(self) -> float:
        return torch.nanmean(self.dice).item()

    @property
    def class_accuracy(self) -> torch.Tensor:
        """float64 (K,): TP / (TP + FN), the recall of each class (NaN when absent from truth);
        its mean is SegNet's "class average accuracy"."""
        tp, _, fn = self._counts()
        return _ratio(tp, tp + fn)

    def _counts(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        confusion = self.confusion.double()
        tp = confusion.diag()
        # Column sums are everything predicted as k, row sums everything truly k.
        return tp, confusion.sum(0) - tp, confusion.sum(1) - tp

    def table(self, classes: list[str]) -> str:
        """Per-class IoU, Dice, recall and true pixel count, then the means and pixel accuracy."""
        support = self.confusion.sum(1)
        lines = [f"{'class':>14} {'IoU':>7} {'Dice':>7} {'recall':>7} {'pixels':>11}"]
        for i, name in enumerate(classes):
            lines.append(f"{name[:14]:>14} {self.iou[i]:7.4f} {self.dice[i]:7.4f} "
                         f"{self.class_accuracy[i]:7.4f} {int(support[i]):11,d}")
        lines.append(f"{'mean':>14} {self.miou:7.4f} {self.mean_dice:7.4f} "
                     f"{torch.nanmean(self.class_accuracy).item():7.4f} {self.count:11,d}")
        lines.append(f"{'pixel accuracy':>14} {self.pixel_accuracy:7.4f}")
        return "\n".join(lines)


def _ratio(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a / b in float64, NaN where b is 0."""
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return torch.where(b > 0, a / torch.where(b > 0, b, 1.0), torch.nan)


# --- the ISBI 2012 challenge's scores ---

def isbi_scores(pred_masks, true_masks, *, foreground: int = 1) -> dict[str, float]:
    """The ISBI 2012 EM challenge's scores of class-index masks (N, H, W) (or one (H, W)), each
    slice scored on its own and the scores averaged over slices.

    Both masks become instance labelings: the 4-connected components of class `foreground`
    (cells), `skimage.measure.label`. Then, with scikit-image:

    - rand_f = 1 − `skimage.metrics.adapted_rand_error(true, pred, ignore_labels=(0,))`, the
      foreground-restricted Rand F-score: "Pixels with label 0 in the true segmentation are
      ignored in the score" (its docstring), i.e. only pixels inside true cells are scored, as in
      the challenge (Arganda-Carreras et al. 2015, Front. Neuroanat. 9:142). A pixel predicted as
      membrane inside a true cell is made a segment of its own (a singleton), as the SNEMI3D/CREMI
      reference code treats the proposal's label 0: it then joins no pair, and a thick predicted
      membrane costs recall instead of merging every cell it touches into one segment.
    - vi_split = H(pred | true) (over-segmentation) and vi_merge = H(true | pred)
      (under-segmentation), `skimage.metrics.variation_of_information(true, pred,
      ignore_labels=(0,))` on the same labelings; vi = their sum (0 for a perfect prediction).
    """
    from skimage.measure import label  # noqa: PLC0415 (imported on first use: slow)

    pred_masks, true_masks = _stack_of_slices(pred_masks, true_masks)
    # 4-connectivity: cells that touch only at a corner across a thin membrane stay apart.
    return isbi_label_scores(np.stack([label(pred == foreground, connectivity=1)
                                       for pred in pred_masks]), true_masks,
                             foreground=foreground)


def isbi_label_scores(pred_cells, true_masks, *, foreground: int = 1) -> dict[str, float]:
    """`isbi_scores` of a predicted instance labeling (N, H, W) or (H, W): one integer per cell,
    0 for membrane (e.g. `watershed_cells`), against class-index true masks."""
    from skimage.measure import label  # noqa: PLC0415 (imported on first use: slow)
    from skimage.metrics import adapted_rand_error, variation_of_information  # noqa: PLC0415

    pred_cells, true_masks = _stack_of_slices(pred_cells, true_masks)
    scores = {"rand_f": [], "vi_split": [], "vi_merge": [], "vi": []}
    for pred, true in zip(pred_cells, true_masks):
        true_cells = label(true == foreground, connectivity=1)  # 0: membrane and void
        pred = pred.astype(np.int64)  # a copy: the caller's labels stay as they are
        membrane = pred == 0
        pred[membrane] = pred.max() + 1 + np.arange(membrane.sum())  # singletons
        error, _, _ = adapted_rand_error(true_cells, pred, ignore_labels=(0,))
        split, merge = variation_of_information(true_cells, pred, ignore_labels=(0,))
        for key, value in (("rand_f", 1 - error), ("vi_split", split), ("vi_merge", merge),
                           ("vi", split + merge)):
            scores[key].append(float(value))
    return {key: float(np.mean(values)) for key, values in scores.items()}


def _stack_of_slices(pred, true) -> tuple[np.ndarray, np.ndarray]:
    """Both as numpy (N, H, W) of one shape (skimage works on numpy)."""
    pred, true = _numpy(pred), _numpy(true)
    if pred.shape != true.shape:
        raise ValueError(f"prediction {pred.shape} and truth {true.shape} differ in shape")
    return (pred[None], true[None]) if pred.ndim == 2 else (pred, true)


def watershed_cells(cell_probability, *, seed_threshold: float = 0.9,
                    min_seed_pixels: int = 10) -> np.ndarray:
    """Cells of a probability map as an integer labeling (N, H, W) (or (H, W)), by a
    seeded watershed (Beucher & Meyer 1993; `skimage.segmentation.watershed`): the seeds are the
    4-connected components of P(cell) > `seed_threshold` of at least `min_seed_pixels` pixels,
    flooded over the membrane probability 1 − P(cell) and kept apart by one-pixel watershed lines
    (label 0). Thresholding a map merges two cells through any gap in the membrane between them;
    the flooding closes such gaps wherever both cells have a seed, and its one-pixel lines stop a
    thick predicted membrane from counting as cell pixels lost. The usual last step from an EM
    boundary map to a segmentation; a post-processing, not the network's own output."""
    from skimage.measure import label  # noqa: PLC0415 (imported on first use: slow)
    from skimage.segmentation import watershed  # noqa: PLC0415

    probability = _numpy(cell_probability).astype(np.float64)
    squeeze = probability.ndim == 2
    cells = []
    for slice_probability in probability[None] if squeeze else probability:
        seeds = label(slice_probability > seed_threshold, connectivity=1)
        too_small = np.bincount(seeds.ravel()) < min_seed_pixels
        too_small[0] = False
        seeds[too_small[seeds]] = 0
        cells.append(watershed(1 - slice_probability, seeds, connectivity=1,
                               watershed_line=True) if seeds.any()
                     else np.zeros(seeds.shape, dtype=np.int64))  # no seed: all membrane
    return cells[0] if squeeze else np.stack(cells)


# The challenge script's sweep: getMaximalVRand(0.0, 1.0, 0.1) over the proposal's probability;
# 1.0 would leave no cell, so it is not tried.
CHALLENGE_THRESHOLDS = tuple(round(0.1 * i, 1) for i in range(10))


def isbi_challenge_scores(cell_probability, true_masks, *, thresholds=CHALLENGE_THRESHOLDS,
                          foreground: int = 1) -> dict[str, float]:
    """`isbi_scores` of the prediction `probability > 0.5` (a 2-class argmax), plus the
    challenge's own reading of a probability map: the highest Rand F-score over `thresholds`
    (one threshold for the whole stack) as `rand_f_max`, with its `vi_max` and `threshold_max`.
    The ISBI 2012 leaderboard ranked by that maximum ("Rand error: 1 − the maximal F-score of
    the foreground-restricted Rand index", Arganda-Carreras et al. 2015); the U-Net paper's Rand
    error 0.0382 is 1 − it. And the scores of the map's seeded watershed (`watershed_cells`,
    default seeds) as `rand_f_watershed` and `vi_watershed`: a post-processed segmentation, told
    apart from the network's own. `cell_probability` (N, H, W) or (H, W): class `foreground`'s."""
    probability = _numpy(cell_probability)
    swept = {}
    for threshold in sorted({*thresholds, 0.5}):
        cells = np.where(probability > threshold, foreground, 1 - foreground)
        swept[threshold] = isbi_scores(cells, true_masks, foreground=foreground)
    best = max(swept, key=lambda t: swept[t]["rand_f"])
    flooded = isbi_label_scores(watershed_cells(probability), true_masks, foreground=foreground)
    return {**swept[0.5], "rand_f_max": swept[best]["rand_f"], "vi_max": swept[best]["vi"],
            "threshold_max": best, "rand_f_watershed": flooded["rand_f"],
            "vi_watershed": flooded["vi"]}


def _numpy(masks) -> np.ndarray:
    return masks.cpu().numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)
