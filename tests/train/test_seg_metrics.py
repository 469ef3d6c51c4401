"""Segmentation scores against scikit-learn on random label maps; ISBI scores on a real slice."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, jaccard_score

from cnnkit.train.seg_metrics import (SegmentationScores, isbi_challenge_scores,
                                      isbi_label_scores, isbi_scores, watershed_cells)
from tests.conftest import DATASETS

K = 5


@pytest.fixture
def batches():
    """Three batches of (prediction, truth) label maps with void pixels; class 4 never occurs."""
    generator = torch.Generator().manual_seed(0)
    out = []
    for _ in range(3):
        truth = torch.randint(0, 4, (2, 12, 16), generator=generator)
        # Mostly right, so that every score is far from 0 and 1.
        noise = torch.randint(0, 4, truth.shape, generator=generator)
        pred = torch.where(torch.rand(truth.shape, generator=generator) < 0.6, truth, noise)
        truth[torch.rand(truth.shape, generator=generator) < 0.1] = 255
        out.append((pred, truth))
    return out


def _labelled(batches):
    pred = torch.cat([p.flatten() for p, _ in batches])
    truth = torch.cat([t.flatten() for _, t in batches])
    keep = truth != 255
    return truth[keep].numpy(), pred[keep].numpy()


def test_scores_agree_with_sklearn(batches):
    scores = SegmentationScores(K)
    for pred, truth in batches:
        scores.update(pred, truth)
    y_true, y_pred = _labelled(batches)
    labels = list(range(K))
    assert np.array_equal(scores.confusion.numpy(), confusion_matrix(y_true, y_pred, labels=labels))
    assert scores.count == len(y_true)
    assert np.isclose(scores.pixel_accuracy, accuracy_score(y_true, y_pred))
    iou = scores.iou.numpy()
    assert np.isnan(iou[4]) and np.isnan(scores.dice.numpy()[4])  # absent from truth and prediction
    assert np.allclose(iou[:4], jaccard_score(y_true, y_pred, labels=labels, average=None,
                                              zero_division=0)[:4])
    assert np.isclose(scores.miou, np.mean(iou[:4]))
    dice = f1_score(y_true, y_pred, labels=labels, average=None, zero_division=np.nan)
    assert np.allclose(scores.dice.numpy(), dice, equal_nan=True)
    assert np.isclose(scores.mean_dice, np.nanmean(dice))
    table = scores.table(["a", "b", "c", "d", "e"])
    assert f"{scores.miou:7.4f}" in table and "pixel accuracy" in table and "nan" in table


def test_logits_and_label_maps_count_alike(batches):
    pred, truth = batches[0]
    logits = torch.randn(2, K, 12, 16).scatter_(1, pred[:, None], 100.0)  # argmax = pred
    from_labels, from_logits = SegmentationScores(K), SegmentationScores(K)
    from_labels.update(pred, truth)
    from_logits.update(logits, truth)
    assert torch.equal(from_labels.confusion, from_logits.confusion)
    with pytest.raises(ValueError, match="class indices must be in 0..4"):
        from_labels.update(pred + 5, truth)


def test_reduce_sum_adds_the_other_ranks_counts_once(batches):
    """Two "ranks" with different shards: the reduced scores are those of all pixels."""
    other = SegmentationScores(K)
    for pred, truth in batches[1:]:
        other.update(pred, truth)
    calls = []

    def reduce_sum(local):  # what all_reduce(SUM) would give
        calls.append(1)
        return local + other.confusion.flatten()

    mine = SegmentationScores(K, reduce_sum=reduce_sum)
    mine.update(*batches[0])
    everything = SegmentationScores(K)
    for pred, truth in batches:
        everything.update(pred, truth)
    assert torch.equal(mine.confusion, everything.confusion)
    assert mine.miou == everything.miou and mine.pixel_accuracy == everything.pixel_accuracy
    assert len(calls) == 1  # one collective, however many scores are read


@pytest.fixture(scope="module")
def slice_mask() -> np.ndarray:
    """A real ISBI label slice as classes: 0 membrane, 1 cell."""
    label = np.asarray(Image.open(DATASETS / "isbi2012-membrane/train/label/25.png"))
    return (label == 255).astype(np.int64)[:256, :256]


def test_isbi_scores_of_perfect_and_shifted_predictions(slice_mask):
    perfect = isbi_scores(slice_mask, slice_mask)
    assert perfect["rand_f"] == pytest.approx(1.0, abs=1e-12)
    assert perfect["vi"] == pytest.approx(0.0, abs=1e-12)
    shifted = isbi_scores(torch.from_numpy(np.roll(slice_mask, 3, axis=1)),
                          torch.from_numpy(slice_mask))
    assert 0.5 < shifted["rand_f"] < 0.99 and shifted["vi"] > 0.1
    assert shifted["vi"] == pytest.approx(shifted["vi_split"] + shifted["vi_merge"])
    # A stack is scored slice by slice and averaged.
    stack = isbi_scores(np.stack([slice_mask, np.roll(slice_mask, 3, axis=1)]),
                        np.stack([slice_mask, slice_mask]))
    assert stack["rand_f"] == pytest.approx((1 + shifted["rand_f"]) / 2)


def test_isbi_split_and_merge_errors_are_told_apart():
    """Two cells: predicting them as one is a merge only; cutting one in two is a split only."""
    truth = np.zeros((40, 60), dtype=np.int64)
    truth[5:35, 5:29] = 1
    truth[5:35, 30:55] = 1  # a one-pixel membrane at column 29
    merged = truth.copy()
    merged[5:35, 29] = 1
    scores = isbi_scores(merged, truth)
    assert scores["vi_split"] == pytest.approx(0, abs=1e-12) and scores["vi_merge"] > 0.5
    assert scores["rand_f"] < 0.8
    cut = truth.copy()
    cut[20, 5:29] = 0  # a predicted membrane across the first cell
    scores = isbi_scores(cut, truth)
    assert scores["vi_merge"] == pytest.approx(0, abs=1e-12) and scores["vi_split"] > 0.3


def test_isbi_challenge_scores_take_the_best_threshold(slice_mask):
    """A probability map whose membranes come out thick at 0.5 but right at a lower cell
    threshold: the challenge's maximal F-score finds that threshold; the 0.5 scores are the
    argmax's."""
    from scipy.ndimage import binary_dilation
    membrane = slice_mask == 0
    thick = binary_dilation(membrane, iterations=2) & ~membrane  # a 2-px halo round membranes
    probability = np.where(membrane, 0.05, np.where(thick, 0.35, 0.9))  # cells' probability
    scores = isbi_challenge_scores(torch.from_numpy(probability), slice_mask)
    at_half = isbi_scores((probability > 0.5).astype(np.int64), slice_mask)
    assert scores["rand_f"] == pytest.approx(at_half["rand_f"]) and at_half["rand_f"] < 0.95
    assert scores["threshold_max"] in (0.1, 0.2, 0.3)  # 0.05 < t < 0.35: the true membranes
    assert scores["rand_f_max"] == pytest.approx(1.0, abs=1e-12)
    assert scores["vi_max"] == pytest.approx(0.0, abs=1e-12)


def test_watershed_closes_a_gap_that_thresholding_merges_through():
    """Two cells behind a membrane with a 4-px gap of uncertain pixels: P > 0.5 joins them into
    one segment; the seeded watershed floods each from its own seed and draws the line."""
    truth = np.zeros((40, 60), dtype=np.int64)
    truth[5:35, 5:29] = 1
    truth[5:35, 30:55] = 1
    probability = np.where(truth == 1, 0.97, 0.03)
    probability[18:22, 29] = 0.6  # the gap
    assert isbi_scores((probability > 0.5).astype(np.int64), truth)["rand_f"] < 0.8
    cells = watershed_cells(torch.from_numpy(probability))
    assert cells.shape == truth.shape and cells[20, 10] != cells[20, 40]
    assert 0 not in (cells[20, 10], cells[20, 40])
    assert isbi_label_scores(cells, truth)["rand_f"] > 0.99


def test_watershed_thins_thick_membranes_on_a_real_slice(slice_mask):
    membrane = slice_mask == 0
    from scipy.ndimage import binary_dilation
    halo = binary_dilation(membrane, iterations=2) & ~membrane
    probability = np.where(membrane, 0.05, np.where(halo, 0.35, 0.97))
    thresholded = isbi_scores((probability > 0.5).astype(np.int64), slice_mask)["rand_f"]
    flooded = isbi_label_scores(watershed_cells(probability), slice_mask)["rand_f"]
    assert thresholded < 0.95 < 0.98 < flooded
    scores = isbi_challenge_scores(probability, slice_mask)  # reported beside the thresholds'
    assert scores["rand_f_watershed"] == pytest.approx(flooded)
    assert scores["vi_watershed"] < scores["vi"]


def test_watershed_seeds_too_small_or_missing():
    probability = np.full((30, 30), 0.2)
    assert not watershed_cells(probability).any()  # no seed: everything is membrane
    probability[2:4, 2:4] = 0.99  # a 4-pixel seed: dropped at min_seed_pixels=10
    probability[10:25, 10:25] = 0.99
    cells = watershed_cells(np.stack([probability, probability]))
    assert cells.shape == (2, 30, 30) and len(np.unique(cells[0])) <= 2  # one cell (+ lines)
    assert len(np.unique(watershed_cells(probability, min_seed_pixels=1))) >= 2
    assert cells[0, 3, 3] == cells[0, 15, 15]  # the small seed's pixels joined the big cell
