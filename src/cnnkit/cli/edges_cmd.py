"""`cnnkit edges IMAGE` (classic kernels) and `cnnkit edges --learn IMAGE...` (a learned kernel)."""
from pathlib import Path

import torch

from cnnkit.data.imagefolder import decode_image
from cnnkit.ops import filters
from cnnkit.utils import CnnkitError

KERNELS = filters.EDGE_KERNELS  # name → (vertical-edge kernel, horizontal-edge kernel)


def add_arguments(parser) -> None:
    parser.add_argument("images", nargs="+", type=Path, help="PNG/JPEG files")
    parser.add_argument("--kernel", choices=sorted(KERNELS), default="sobel")
    parser.add_argument("--learn", action="store_true",
                        help="train a single 3×3 conv by gradient descent to reproduce the kernel")
    parser.add_argument("--steps", type=int, default=400, help="gradient steps with --learn")
    parser.add_argument("--size", type=int, default=128, help="images are resized to this side for --learn")
    parser.add_argument("-o", "--output", type=Path, help="figure path (default: edges.png / learned.png)")


def run(args) -> int:
    from cnnkit.viz.edges import plot_edge_maps, plot_learned_kernel  # noqa: PLC0415
    vertical, horizontal = KERNELS[args.kernel]
    if not args.learn:
        if len(args.images) != 1:
            raise CnnkitError("edges takes one image (or several with --learn)")
        image = decode_image(args.images[0], None, None).float() / 255  # (C, H, W), grey or RGB
        maps = filters.edge_maps(image, vertical, horizontal)
        out = plot_edge_maps(image, maps, args.kernel.capitalize(), args.output or Path("edges.png"))
        print(f"wrote {out}")
        return 0
    if args.steps <= 0:
        raise CnnkitError(f"--steps must be positive, got {args.steps}")
    from cnnkit.train.learn_filter import learn_kernel  # noqa: PLC0415
    # Grey images: with one channel the least-squares fit determines the kernel itself.
    images = torch.stack([decode_image(p, 1, args.size)
                          for p in args.images]).float() / 255  # (N, 1, S, S)
    learned, losses = learn_kernel(images, vertical, steps=args.steps)
    learned = learned[0]
    print(f"learned kernel after {args.steps} steps (final MSE {losses[-1]:.2e}) "
          f"vs {args.kernel} (vertical edges):")
    for row_l, row_t in zip(learned.tolist(), vertical.tolist()):
        print("  " + " ".join(f"{v:6.3f}" for v in row_l) + "    |  "
              + " ".join(f"{v:5.1f}" for v in row_t))
    print(f"max |learned − {args.kernel}| = {(learned - vertical).abs().max():.4f}")
    out = plot_learned_kernel(learned, vertical, losses, args.kernel.capitalize(),
                              args.output or Path("learned.png"))
    print(f"wrote {out}")
    return 0
