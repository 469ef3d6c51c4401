"""Forward + backward time of cnnkit's scratch conv (im2col) and max-pool against PyTorch's.

LeNet's layer shapes (the chapter's network on 28×28 MNIST), float32 on the CPU:

    conv1  (B, 1, 28, 28)  -> 20 @ 5×5    the image needs no gradient, as in training
    pool1  (B, 20, 24, 24) -> 2×2 / 2
    conv2  (B, 20, 12, 12) -> 50 @ 5×5
    pool2  (B, 50, 8, 8)   -> 2×2 / 2

Each timing is the median over `--repeats` runs of forward, then backward with a fixed output
gradient, after a few warm-up runs; PyTorch and scratch runs alternate. Ratio = scratch / PyTorch
(target for the conv: ≤ 3).

    python benchmarks/scratch_ops.py [--batches 64 128] [--repeats 50] [--threads N]
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from _timing import median_ms  # benchmarks/_timing.py: the script's folder is on sys.path

from cnnkit.ops import conv2d, max_pool2d

# name, input shape without the batch, weight shape (None for a pool), input needs a gradient
LAYERS = [
    ("conv1", (1, 28, 28), (20, 1, 5, 5), False),
    ("pool1", (20, 24, 24), None, True),
    ("conv2", (20, 12, 12), (50, 20, 5, 5), True),
    ("pool2", (50, 8, 8), None, True),
]


def _step(op, x, params, grad_out):
    """One forward and backward; gradients are reset so nothing accumulates across runs."""
    def run():
        for t in (x, *params):
            t.grad = None
        op(x, *params).backward(grad_out)
    return run


def bench_layer(batch: int, shape, weight_shape, input_grad: bool,
                repeats: int) -> tuple[float, float]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *shape, generator=gen).requires_grad_(input_grad)
    if weight_shape is None:
        ours, ref, params = (lambda t: max_pool2d(t, 2, 2)), (lambda t: F.max_pool2d(t, 2, 2)), ()
    else:
        w = (torch.randn(*weight_shape, generator=gen) * 0.1).requires_grad_()
        b = torch.zeros(weight_shape[0]).requires_grad_()
        ours, ref, params = conv2d, F.conv2d, (w, b)
    grad_out = torch.randn(ref(x, *params).shape, generator=gen)
    torch.testing.assert_close(ours(x, *params), ref(x, *params), atol=1e-4, rtol=1e-4)
    t_ref, t_ours = median_ms([_step(ref, x, params, grad_out), _step(ours, x, params, grad_out)],
                               repeats)
    return t_ref, t_ours


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--threads", type=int, default=None, help="default: torch's own choice")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32 CPU, "
          f"median of {args.repeats} forward+backward runs")
    print(f"{'layer':6} {'batch':>5} {'torch ms':>9} {'scratch ms':>10} {'ratio':>6}")
    worst_conv = 0.0
    for batch in args.batches:
        for name, shape, weight_shape, input_grad in LAYERS:
            t_ref, t_ours = bench_layer(batch, shape, weight_shape, input_grad, args.repeats)
            ratio = t_ours / t_ref
            if weight_shape is not None:
                worst_conv = max(worst_conv, ratio)
            print(f"{name:6} {batch:5d} {t_ref:9.3f} {t_ours:10.3f} {ratio:6.2f}")
    verdict = "within" if worst_conv <= 3 else "OUTSIDE"
    print(f"worst im2col conv ratio {worst_conv:.2f}: {verdict} the 3× target")


if __name__ == "__main__":
    main()
