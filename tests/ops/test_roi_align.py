"""cnnkit.ops RoIAlign / RoIPool / MultiScaleRoIAlign against float64 references written here: loops
over RoIs, bins and sampling points with bilinear interpolation from its definition (boundary rules
of torchvision's CPU kernel), an independent check through F.grid_sample, and gradcheck."""
import math
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F

from cnnkit.ops.poolers import LevelMapper, MultiScaleRoIAlign
from cnnkit.ops.roi_align import RoIAlign, RoIPool, roi_align, roi_pool
from cnnkit.utils import CnnkitError


def bilinear(img, y, x):
    """img (C, H, W) at the real point (y, x), pixel centres at integers, as the kernel reads it:
    0 beyond one pixel outside the map, edge rows/columns repeated within that pixel."""
    _, h, w = img.shape
    if y < -1 or y > h or x < -1 or x > w:
        return torch.zeros(img.shape[0], dtype=img.dtype)
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = min(int(y), h - 1), min(int(x), w - 1)
    y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
    ly = y - y0 if y0 < h - 1 else 0.0
    lx = x - x0 if x0 < w - 1 else 0.0
    return ((1 - ly) * (1 - lx) * img[:, y0, x0] + (1 - ly) * lx * img[:, y0, x1]
            + ly * (1 - lx) * img[:, y1, x0] + ly * lx * img[:, y1, x1])


def reference_roi_align(x, rois, out_hw, scale, ratio, aligned):
    ph, pw = out_hw
    out = torch.zeros(len(rois), x.shape[1], ph, pw, dtype=x.dtype)
    for k, roi in enumerate(rois.tolist()):
        img = x[int(roi[0])]
        off = 0.5 if aligned else 0.0
        x1, y1, x2, y2 = (v * scale - off for v in roi[1:])
        rw, rh = x2 - x1, y2 - y1
        if not aligned:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        bh, bw = rh / ph, rw / pw
        gh = ratio if ratio > 0 else math.ceil(rh / ph)
        gw = ratio if ratio > 0 else math.ceil(rw / pw)
        for i in range(ph):
            for j in range(pw):
                total = torch.zeros(x.shape[1], dtype=x.dtype)
                for iy in range(gh):
                    for ix in range(gw):
                        total += bilinear(img, y1 + i * bh + (iy + 0.5) * bh / gh,
                                          x1 + j * bw + (ix + 0.5) * bw / gw)
                out[k, :, i, j] = total / max(gh * gw, 1)
    return out


def random_rois(k, n, h, w, gen, scale=1.0):
    """RoIs in image coordinates: inside, partly outside, tiny, degenerate (x2 < x1)."""
    xy = (torch.rand(k, 2, generator=gen, dtype=torch.float64) * 1.4 - 0.3) * torch.tensor([w, h])
    wh = torch.rand(k, 2, generator=gen, dtype=torch.float64) * torch.tensor([w, h]) * 0.8
    boxes = torch.cat([xy, xy + wh], 1) / scale
    boxes[0] = torch.tensor([0.2, 0.3, 0.6, 0.5]) / scale                 # under a pixel
    boxes[1] = torch.tensor([-5.0, -4.0, w + 3.0, h + 2.0]) / scale       # covers and overhangs
    boxes[2] = torch.tensor([3.0, 3.0, 2.0, 1.0]) / scale                 # malformed
    batch = torch.randint(0, n, (k, 1), generator=gen).double()
    return torch.cat([batch, boxes], 1)                                   # (K, 5)


CONFIGS = [  # output size, spatial scale, sampling ratio
    ((2, 2), 1.0, -1),
    ((3, 4), 1.0, 2),
    ((3, 4), 0.5, -1),
    ((4, 3), 0.25, 1),
    ((1, 1), 1.0, 3),
]


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("out_hw, scale, ratio", CONFIGS)
def test_roi_align_matches_reference(out_hw, scale, ratio, aligned):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 9, 11, generator=g, dtype=torch.float64)
    rois = random_rois(10, 2, 9, 11, g, scale)
    got = roi_align(x, rois, out_hw, scale, ratio, aligned)
    torch.testing.assert_close(got, reference_roi_align(x, rois, out_hw, scale, ratio, aligned),
                               atol=1e-12, rtol=0)
    # float32 runs the same arithmetic
    torch.testing.assert_close(roi_align(x.float(), rois.float(), out_hw, scale, ratio, aligned),
                               got.float(), atol=1e-5, rtol=1e-5)


def grid_sample_roi_align(x, rois, out_hw, ratio, aligned):
    """Independent oracle: the same sample points read through F.grid_sample (border padding is
    the kernel's clamp), zeroed where the kernel drops samples beyond one pixel outside."""
    ph, pw = out_hw
    _, _, h, w = x.shape
    out = []
    for roi in rois:
        off = 0.5 if aligned else 0.0
        x1, y1, x2, y2 = (roi[1:] - off).tolist()
        rw, rh = (x2 - x1, y2 - y1) if aligned else (max(x2 - x1, 1.0), max(y2 - y1, 1.0))
        ys = y1 + (torch.arange(ph * ratio, dtype=x.dtype) + 0.5) * rh / (ph * ratio)  # (PH·r,)
        xs = x1 + (torch.arange(pw * ratio, dtype=x.dtype) + 0.5) * rw / (pw * ratio)  # (PW·r,)
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        grid = torch.stack([gx / (w - 1) * 2 - 1, gy / (h - 1) * 2 - 1], -1)  # (PH·r, PW·r, 2)
        v = F.grid_sample(x[int(roi[0])][None], grid[None], mode="bilinear",
                          padding_mode="border", align_corners=True)[0]        # (C, PH·r, PW·r)
        inside = ((gy >= -1) & (gy <= h) & (gx >= -1) & (gx <= w)).to(x.dtype)
        v = v * inside
        out.append(v.view(-1, ph, ratio, pw, ratio).mean((2, 4)))                      # (C, PH, PW)
    return torch.stack(out)


@pytest.mark.parametrize("aligned", [False, True])
def test_roi_align_matches_grid_sample(aligned):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 12, 10, generator=g, dtype=torch.float64)
    rois = random_rois(12, 2, 12, 10, g)
    for ratio in (1, 2, 3):
        torch.testing.assert_close(roi_align(x, rois, (3, 2), 1.0, ratio, aligned),
                                   grid_sample_roi_align(x, rois, (3, 2), ratio, aligned),
                                   atol=1e-10, rtol=0)


def test_aligned_samples_where_the_box_is():
    # a ramp whose pixel i holds i: the continuous position u has value u - 0.5 (pixel centres
    # at +0.5). The box [2, 6] in 2 bins has bin centres at 3 and 5: aligned gives 2.5, 4.5.
    ramp = torch.arange(10, dtype=torch.float64).expand(1, 1, 10, 10)
    box = torch.tensor([[0, 2.0, 2.0, 6.0, 6.0]], dtype=torch.float64)
    assert roi_align(ramp, box, 2, 1.0, 2, aligned=True)[0, 0, 0].tolist() == [2.5, 4.5]
    assert roi_align(ramp, box, 2, 1.0, 2, aligned=False)[0, 0, 0].tolist() == [3.0, 5.0]


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("ratio", [-1, 2])
def test_roi_align_gradcheck(aligned, ratio):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 2, 6, 7, generator=g, dtype=torch.float64, requires_grad=True)
    rois = random_rois(5, 2, 6, 7, g)
    assert torch.autograd.gradcheck(lambda t: roi_align(t, rois, (2, 3), 1.0, ratio, aligned), (x,))


def test_roi_align_boxes_as_list_empty_and_module():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 8, 8, generator=g, requires_grad=True)
    a, b = torch.tensor([[1.0, 1, 5, 6]]), torch.tensor([[0.0, 2, 7, 7], [2, 2, 4, 4]])
    as_list = roi_align(x, [a, b], 3, 0.5, 2)
    rois = torch.tensor([[0, 1.0, 1, 5, 6], [1, 0, 2, 7, 7], [1, 2, 2, 4, 4]])
    torch.testing.assert_close(as_list, roi_align(x, rois, (3, 3), 0.5, 2))
    module = RoIAlign((3, 3), spatial_scale=0.5, sampling_ratio=2)
    torch.testing.assert_close(module(x, rois), as_list)
    assert "sampling_ratio=2" in repr(module) and "aligned=False" in repr(module)
    empty = roi_align(x, torch.zeros(0, 5), 3)
    assert empty.shape == (0, 3, 3, 3)
    empty.sum().backward()  # no RoIs in a batch: still a graph, zero gradient
    assert x.grad.abs().sum() == 0
    with pytest.raises(CnnkitError, match=r"\(K, 5\)"):
        roi_align(x, torch.zeros(2, 4), 3)
    with pytest.raises(CnnkitError, match="batch indices"):
        roi_align(x, torch.tensor([[2, 0.0, 0, 1, 1]]), 3)


def test_roi_align_under_autocast_runs_in_float32():
    x = torch.randn(1, 2, 8, 8)
    rois = torch.tensor([[0, 1.0, 1, 6, 6]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = roi_align(x, rois, 2, 1.0, 2)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, roi_align(x, rois, 2, 1.0, 2))


# --- RoIPool ---

def c_round(v):
    return math.floor(v + 0.5) if v >= 0 else math.ceil(v - 0.5)


def reference_roi_pool(x, rois, out_hw, scale):
    ph, pw = out_hw
    _, c, h, w = x.shape
    out = torch.zeros(len(rois), c, ph, pw, dtype=x.dtype)
    for k, roi in enumerate(rois.tolist()):
        x1, y1, x2, y2 = (c_round(v * scale) for v in roi[1:])
        rw, rh = max(x2 - x1 + 1, 1), max(y2 - y1 + 1, 1)
        for i in range(ph):
            for j in range(pw):
                hs = min(max(math.floor(i * rh / ph) + y1, 0), h)
                he = min(max(math.ceil((i + 1) * rh / ph) + y1, 0), h)
                ws = min(max(math.floor(j * rw / pw) + x1, 0), w)
                we = min(max(math.ceil((j + 1) * rw / pw) + x1, 0), w)
                if he > hs and we > ws:
                    out[k, :, i, j] = x[int(roi[0]), :, hs:he, ws:we].amax((1, 2))
    return out


@pytest.mark.parametrize("out_hw, scale", [((2, 2), 1.0), ((3, 4), 0.5), ((4, 3), 0.25)])
def test_roi_pool_matches_reference(out_hw, scale):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 9, 11, generator=g, dtype=torch.float64)
    rois = random_rois(10, 2, 9, 11, g, scale)
    torch.testing.assert_close(roi_pool(x, rois, out_hw, scale),
                               reference_roi_pool(x, rois, out_hw, scale), atol=0, rtol=0)


def test_roi_pool_by_hand():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    whole = torch.tensor([[0, 0.0, 0, 3, 3]])  # pixels 0..3 inclusive: 4 x 4
    torch.testing.assert_close(roi_pool(x, whole, 2), F.max_pool2d(x, 2))
    # 2.5 rounds away from zero to 3 (torch.round would give 2): one pixel, (3, 3) = 15
    assert roi_pool(x, torch.tensor([[0, 5.0, 5, 5, 5]]), 1, spatial_scale=0.5).item() == 15
    assert roi_pool(x, torch.tensor([[0, 9.0, 9, 12, 12]]), 2).abs().sum() == 0  # outside: empty
    module = RoIPool(2, 1.0)
    torch.testing.assert_close(module(x, [whole[:, 1:]]), F.max_pool2d(x, 2))
    assert "spatial_scale=1.0" in repr(module)
    assert roi_pool(x, torch.zeros(0, 5), 2).shape == (0, 1, 2, 2)


def test_roi_pool_gradcheck_and_ties():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 2, 7, 8, generator=g, dtype=torch.float64, requires_grad=True)
    rois = random_rois(6, 2, 7, 8, g)
    assert torch.autograd.gradcheck(lambda t: roi_pool(t, rois, (3, 2), 1.0), (x,))
    # a constant bin: the whole gradient goes to its first pixel in row-major order
    flat = torch.zeros(1, 1, 4, 4, requires_grad=True)
    roi_pool(flat, torch.tensor([[0, 0.0, 0, 3, 3]]), 2).sum().backward()
    assert flat.grad[0, 0].tolist() == [[1, 0, 1, 0], [0, 0, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]


# --- multi-level FPN assignment ---

def test_level_mapper_by_hand():
    # sqrt(area) = 224 is level 4; each halving one level down; clamped to [2, 5]
    sides = torch.tensor([16.0, 111.0, 112.0, 223.0, 224.0, 447.0, 448.0, 2000.0])
    boxes = torch.stack([torch.zeros(8), torch.zeros(8), sides, sides], 1)
    levels = LevelMapper(2, 5)([boxes[:3], boxes[3:]])
    assert levels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]  # k - k_min for k = 2 2 3 3 4 4 5 5


def test_multiscale_roi_align_pools_each_box_from_its_level():
    g = torch.Generator().manual_seed(6)
    image_shapes = [(512, 480), (500, 512)]  # the largest extent, 512 x 512, sets the scales
    feats = OrderedDict((name, torch.randn(2, 3, 512 // s, 512 // s, generator=g))
                        for name, s in [("p2", 4), ("p3", 8), ("p4", 16), ("p5", 32),
                                        ("pool", 64)])  # "pool" is not pooled from
    boxes = [torch.tensor([[10.0, 10, 42, 42], [0, 0, 224, 224]]),  # sides 32, 224: P2, P4
             torch.tensor([[100.0, 50, 212, 162], [20, 20, 500, 500],  # 112, 480: P3, P5
                           [5, 5, 5, 5]])]                              # empty: clamped to P2
    pooler = MultiScaleRoIAlign(["p2", "p3", "p4", "p5"], 7, 2)
    out = pooler(feats, boxes, image_shapes)
    assert out.shape == (5, 3, 7, 7)
    assert pooler.scales == [1 / 4, 1 / 8, 1 / 16, 1 / 32]
    assert (pooler.map_levels.k_min, pooler.map_levels.k_max) == (2, 5)
    rois = torch.cat([torch.cat([torch.full((len(b), 1), float(i)), b], 1)
                      for i, b in enumerate(boxes)])                                # (5, 5)
    names, scales = ["p2", "p4", "p3", "p5", "p2"], [1 / 4, 1 / 16, 1 / 8, 1 / 32, 1 / 4]
    for k, (name, scale) in enumerate(zip(names, scales)):
        torch.testing.assert_close(out[k], roi_align(feats[name], rois[k:k + 1], 7, scale, 2)[0])
    # one level: plain roi_align at that level's scale
    single = MultiScaleRoIAlign(["p3"], (7, 7), 2)
    torch.testing.assert_close(single(feats, boxes, image_shapes),
                               roi_align(feats["p3"], rois, 7, 1 / 8, 2))
    with pytest.raises(CnnkitError, match="none of the feature maps"):
        MultiScaleRoIAlign(["c5"], 7, 2)(feats, boxes, image_shapes)


def test_multiscale_roi_align_backward_reaches_every_used_level():
    feats = OrderedDict((n, torch.randn(1, 2, 64 // s, 64 // s, requires_grad=True))
                        for n, s in [("0", 4), ("1", 8)])
    boxes = [torch.tensor([[0.0, 0, 8, 8], [0, 0, 60, 60]])]
    MultiScaleRoIAlign(["0", "1"], 2, 2, canonical_scale=32, canonical_level=3)(
        feats, boxes, [(64, 64)]).sum().backward()
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in feats.values())


def test_multiscale_roi_align_images_without_boxes():
    feats = OrderedDict((n, torch.randn(2, 2, 64 // s, 64 // s, requires_grad=True))
                        for n, s in [("0", 4), ("1", 8)])
    pooler = MultiScaleRoIAlign(["0", "1"], 7, 2)
    none = pooler(feats, [torch.zeros(0, 4), torch.zeros(0, 4)], [(64, 64)] * 2)
    assert none.shape == (0, 2, 7, 7)
    none.sum().backward()  # an image batch with no proposals trains on: zero gradient, no error
    assert all(f.grad.abs().sum() == 0 for f in feats.values())
    one = pooler(feats, [torch.zeros(0, 4), torch.tensor([[0.0, 0, 30, 30]])], [(64, 64)] * 2)
    torch.testing.assert_close(one, roi_align(feats["0"], torch.tensor([[1, 0.0, 0, 30, 30]]),
                                              7, 1 / 4, 2))
