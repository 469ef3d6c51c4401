"""Time cnnkit's multi-level RoIAlign (Mask R-CNN's box-head pooler) against a loop over RoIs.

The naive version is what one writes from the paper, box by box: map the box to its FPN level
(the same LevelMapper), place sampling_ratio² points in each of the 7 × 7 bins, interpolate each
bilinearly with torchvision's border rules, average. It is vectorised within a box, so the loop
is over RoIs only — the per-box Python overhead the batched version removes. Both give the same
numbers (checked, float32, atol 1e-4). Setting: the FPN of one 800 × 800 image (P2–P5: 200², 100²,
50², 25² × 256 channels), boxes 16–400 px at random, output 7 × 7, sampling_ratio 2, aligned=False
(torchvision's MultiScaleRoIAlign). Each time is the median of `--repeats` alternating runs.
Ratio = naive / cnnkit.

    python benchmarks/roi_align.py [--boxes 512 2000] [--repeats 7] [--threads N]
"""
from __future__ import annotations

import argparse

import torch
from _timing import median_ms  # benchmarks/_timing.py: the script's folder is on sys.path

from cnnkit.ops.poolers import MultiScaleRoIAlign

SIZE, CHANNELS, OUT, SAMPLING = 800, 256, 7, 2
LEVELS = {"0": 4, "1": 8, "2": 16, "3": 32}  # feature map name → stride


def bilinear(feature: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """torchvision's bilinear_interpolate for points (P,) on feature (C, H, W) → (C, P)."""
    _, height, width = feature.shape
    valid = (y >= -1) & (y <= height) & (x >= -1) & (x <= width)  # outside: contributes 0
    y, x = y.clamp(min=0), x.clamp(min=0)
    y_low, x_low = y.floor().long().clamp(max=height - 1), x.floor().long().clamp(max=width - 1)
    y = torch.where(y_low >= height - 1, y_low.float(), y)  # at the last row: read it only
    x = torch.where(x_low >= width - 1, x_low.float(), x)
    y_high, x_high = (y_low + 1).clamp(max=height - 1), (x_low + 1).clamp(max=width - 1)
    ly, lx = y - y_low, x - x_low
    hy, hx = 1 - ly, 1 - lx
    value = (hy * hx * feature[:, y_low, x_low] + hy * lx * feature[:, y_low, x_high]
             + ly * hx * feature[:, y_high, x_low] + ly * lx * feature[:, y_high, x_high])
    return value * valid


def naive_multiscale_roi_align(features: list[torch.Tensor], boxes: torch.Tensor,
                               levels: torch.Tensor) -> torch.Tensor:
    """One image's boxes (K, 4), each RoIAligned on its level: (K, C, 7, 7)."""
    out = []
    grid = (torch.arange(OUT)[:, None] + (torch.arange(SAMPLING) + 0.5)[None] / SAMPLING)  # (7, s)
    for box, level in zip(boxes, levels.tolist()):
        feature, scale = features[level][0], 1.0 / list(LEVELS.values())[level]
        x1, y1, x2, y2 = (box * scale).tolist()
        bin_w, bin_h = max(x2 - x1, 1.0) / OUT, max(y2 - y1, 1.0) / OUT  # aligned=False
        ys = (y1 + grid * bin_h).flatten()  # (7·s,)
        xs = (x1 + grid * bin_w).flatten()
        points = bilinear(feature, ys[:, None].expand(-1, len(xs)).flatten(),
                          xs[None, :].expand(len(ys), -1).flatten())  # (C, 7s · 7s)
        points = points.view(-1, OUT, SAMPLING, OUT, SAMPLING)
        out.append(points.mean(dim=(2, 4)))
    return torch.stack(out)


def make_boxes(n: int, gen: torch.Generator) -> torch.Tensor:
    wh = 16 * (25 ** torch.rand(n, 2, generator=gen))  # 16–400 px, log-uniform
    xy = torch.rand(n, 2, generator=gen) * (SIZE - wh)
    return torch.cat([xy, xy + wh], 1)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boxes", type=int, nargs="+", default=[512, 2000])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    features = {name: torch.randn(1, CHANNELS, SIZE // s, SIZE // s, generator=gen)
                for name, s in LEVELS.items()}
    pooler = MultiScaleRoIAlign(list(LEVELS), OUT, SAMPLING)
    print(f"multi-level RoIAlign, 800x800 image, P2-P5 x {CHANNELS} channels, 7x7, sampling 2, "
          f"{torch.get_num_threads()} threads, median of {args.repeats} alternating runs")
    print("| boxes | naive loop ms | cnnkit ms | ratio |")
    print("|---:|---:|---:|---:|")
    for n in args.boxes:
        boxes = make_boxes(n, gen)
        ours = pooler(features, [boxes], [(SIZE, SIZE)])
        levels = pooler.map_levels([boxes])  # the same level per box for both versions
        maps = list(features.values())
        naive = naive_multiscale_roi_align(maps, boxes, levels)
        torch.testing.assert_close(ours, naive, rtol=0, atol=1e-4)
        t_naive, t_ours = median_ms([lambda: naive_multiscale_roi_align(maps, boxes, levels),
                                     lambda: pooler(features, [boxes], [(SIZE, SIZE)])],
                                    args.repeats, warmup=1)
        print(f"| {n} | {t_naive:.0f} | {t_ours:.1f} | {t_naive / t_ours:.1f}x |")


if __name__ == "__main__":
    main()
