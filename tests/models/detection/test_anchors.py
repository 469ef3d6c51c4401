"""Anchors, matching and sampling on hand-made cases (torchvision's semantics)."""
import pytest
import torch

from cnnkit.models.detection._utils import BalancedPositiveNegativeSampler, Matcher, SSDMatcher
from cnnkit.models.detection.anchors import AnchorGenerator
from cnnkit.models.detection.transform import ImageList
from cnnkit.utils import CnnkitError


def _image_list(h, w, n=1):
    return ImageList(torch.zeros(n, 3, h, w), [(h, w)] * n)


def test_cell_anchors_are_rounded_and_ratio_major():
    # size 8: ratio 0.5 -> w = 8·√2 = 11.31, h = 5.66 -> half sizes 5.66, 2.83 -> rounded 6, 3
    cell = AnchorGenerator.generate_anchors((8,), (0.5, 1.0, 2.0))
    assert cell.tolist() == [[-6, -3, 6, 3], [-4, -4, 4, 4], [-3, -6, 3, 6]]
    # two sizes, one ratio: sizes vary fastest; torch.round takes half to even (2.5 -> 2)
    assert AnchorGenerator.generate_anchors((5, 8), (1.0,)).tolist() == [[-2, -2, 2, 2],
                                                                         [-4, -4, 4, 4]]


def test_anchors_over_a_grid_by_hand():
    gen = AnchorGenerator(((8,),), ((0.5, 1.0, 2.0),))
    assert gen.num_anchors_per_location() == [3]
    # a 2×3 map of a 16×24 batch: stride 8 both ways; positions row-major, 3 anchors each
    anchors = gen(_image_list(16, 24, n=2), [torch.zeros(2, 4, 2, 3)])
    assert len(anchors) == 2 and torch.equal(anchors[0], anchors[1])
    assert anchors[0].shape == (2 * 3 * 3, 4)
    cell = torch.tensor([[-6., -3, 6, 3], [-4, -4, 4, 4], [-3, -6, 3, 6]])
    expected = torch.cat([cell + torch.tensor([x, y, x, y], dtype=torch.float32)
                          for y in (0, 8) for x in (0, 8, 16)])
    torch.testing.assert_close(anchors[0], expected)


def test_anchors_per_level_and_strides():
    gen = AnchorGenerator(((16,), (32,)), ((1.0,),) * 2)
    # strides are image size // map size per axis: 4×8 on level 0, 8×16 on level 1
    anchors = gen(_image_list(32, 64), [torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 4, 4)])[0]
    assert anchors.shape == (64 + 16, 4)
    assert anchors[1].tolist() == [-8 + 8, -8, 8 + 8, 8]           # level 0, x stride 8
    assert anchors[8].tolist() == [-8, -8 + 4, 8, 8 + 4]           # level 0, next row: y stride 4
    assert anchors[64 + 1].tolist() == [-16 + 16, -16, 16 + 16, 16]  # level 1, x stride 16
    with pytest.raises(CnnkitError, match="2 feature maps but got 1"):
        gen(_image_list(32, 64), [torch.zeros(1, 1, 8, 8)])


def test_matcher_thresholds_and_low_quality_matches():
    iou = torch.tensor([[0.9, 0.4, 0.10, 0.0],
                        [0.2, 0.5, 0.65, 0.2]])  # (2 ground truths, 4 predictions)
    strict = Matcher(0.7, 0.3, allow_low_quality_matches=False)
    # pred 0 matches gt 0; preds 1, 2 lie between the thresholds; pred 3 is background
    assert strict(iou.clone()).tolist() == [0, -2, -2, -1]
    lenient = Matcher(0.7, 0.3, allow_low_quality_matches=True)
    # gt 1 has no prediction above 0.7: its best one (pred 2, IoU 0.65) is kept for it
    assert lenient(iou.clone()).tolist() == [0, -2, 1, -1]


def test_matcher_low_quality_keeps_ties_and_even_background():
    iou = torch.tensor([[0.1, 0.25, 0.25, 0.0]])
    # both predictions tied at gt 0's best IoU 0.25 (< low 0.3) are matched to it
    assert Matcher(0.7, 0.3, True)(iou).tolist() == [-1, 0, 0, -1]


def test_matcher_refuses_empty_inputs():
    with pytest.raises(CnnkitError, match="ground-truth"):
        Matcher(0.5, 0.4)(torch.zeros(0, 5))
    with pytest.raises(CnnkitError, match="proposal"):
        Matcher(0.5, 0.4)(torch.zeros(3, 0))
    with pytest.raises(CnnkitError, match="above"):
        Matcher(0.3, 0.5)


def test_ssd_matcher_gives_every_ground_truth_its_best_prior():
    iou = torch.tensor([[0.6, 0.2, 0.1], [0.1, 0.3, 0.2]])
    assert SSDMatcher(0.5)(iou).tolist() == [0, 1, -1]


def test_sampler_counts_and_ignores():
    torch.manual_seed(0)
    labels = torch.tensor([1] * 10 + [0] * 100 + [-1] * 20)
    sampler = BalancedPositiveNegativeSampler(16, 0.25)
    (pos,), (neg,) = sampler([labels])
    assert pos.dtype == torch.uint8 and pos.sum() == 4 and neg.sum() == 12
    assert (labels[pos.bool()] == 1).all() and (labels[neg.bool()] == 0).all()
    # too few positives: the rest of the batch is filled with negatives
    (pos,), (neg,) = sampler([torch.tensor([1, 1] + [0] * 30 + [-1] * 5)])
    assert pos.sum() == 2 and neg.sum() == 14
    (pos,), (neg,) = sampler([torch.tensor([0, 0, 0, -1])])  # fewer than asked: all of them
    assert pos.sum() == 0 and neg.tolist() == [1, 1, 1, 0]
