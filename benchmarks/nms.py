"""Time cnnkit's vectorised NMS against the naive Python-loop NMS, on 1,000 and 5,000 random boxes.

The naive version is the one most tutorials write: take the best remaining box, drop everything
overlapping it, repeat — one IoU row and a few tensor ops per kept box. Both give the same indices
(checked). Two box sets per size, float32, in a 1000 × 1000 image, IoU threshold 0.5:

    uniform    boxes 10–110 px anywhere: few overlaps, most boxes kept (the slow case for a loop)
    clustered  boxes jittered around 20 objects, like RPN proposals: most boxes suppressed

Each time is the median over `--repeats` runs, after a warm-up, the two versions alternating run by
run so a busy shared machine slows both alike. Ratio = naive / cnnkit.

    python benchmarks/nms.py [--sizes 1000 5000] [--repeats 21] [--threads N]
"""
from __future__ import annotations

import argparse

import torch
from _timing import median_ms  # benchmarks/_timing.py: the script's folder is on sys.path

from cnnkit.ops.boxes import box_iou, nms


def naive_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    order = torch.sort(scores, descending=True, stable=True).indices
    keep = []
    while order.numel() > 0:
        best, order = order[0], order[1:]
        keep.append(best)
        iou = box_iou(boxes[best][None], boxes[order])[0]  # (remaining,)
        order = order[~(iou > iou_threshold)]              # NaN (empty boxes) never suppresses
    return torch.stack(keep) if keep else torch.empty(0, dtype=torch.int64)


def make_boxes(kind: str, n: int, gen: torch.Generator):
    if kind == "uniform":
        xy = torch.rand(n, 2, generator=gen) * 900
        wh = torch.rand(n, 2, generator=gen) * 100 + 10
    else:
        centres = torch.rand(20, 2, generator=gen) * 800 + 100
        sizes = torch.rand(20, 2, generator=gen) * 150 + 30
        obj = torch.randint(0, 20, (n,), generator=gen)
        wh = sizes[obj] * (1 + 0.3 * torch.randn(n, 2, generator=gen)).clamp(min=0.3)
        xy = centres[obj] + 0.15 * sizes[obj] * torch.randn(n, 2, generator=gen) - wh / 2
    return torch.cat([xy, xy + wh], 1), torch.rand(n, generator=gen)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"NMS, float32, IoU > {args.threshold}, {torch.get_num_threads()} threads, "
          f"median of {args.repeats} alternating runs")
    print("| boxes | set | kept | naive loop ms | cnnkit ms | ratio |")
    print("|---:|---|---:|---:|---:|---:|")
    gen = torch.Generator().manual_seed(0)
    for n in args.sizes:
        for kind in ("uniform", "clustered"):
            boxes, scores = make_boxes(kind, n, gen)
            ours = nms(boxes, scores, args.threshold)
            assert torch.equal(ours, naive_nms(boxes, scores, args.threshold)), "results differ"
            t_naive, t_ours = median_ms([lambda: naive_nms(boxes, scores, args.threshold),
                                         lambda: nms(boxes, scores, args.threshold)], args.repeats)
            print(f"| {n} | {kind} | {len(ours)} | {t_naive:.1f} | {t_ours:.2f} | "
                  f"{t_naive / t_ours:.1f}x |")


if __name__ == "__main__":
    main()
