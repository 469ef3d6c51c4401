"""`cnnkit conv IMAGE`: the chapter's convolution on an image, every knob exposed.

Runs cnnkit's own `ops.conv2d` (not nn.Conv2d) and prints the output-size formula it obeyed.
"""
from pathlib import Path

import torch

from cnnkit.data.imagefolder import decode_image
from cnnkit.ops import conv2d, filters
from cnnkit.ops.conv import _padding as _resolve_padding
from cnnkit.utils import CnnkitError, suggest

NAMED = {"sobel_x": filters.SOBEL_X, "sobel_y": filters.SOBEL_Y, "prewitt_x": filters.PREWITT_X,
         "prewitt_y": filters.PREWITT_Y, "scharr_x": filters.SCHARR_X,
         "scharr_y": filters.SCHARR_Y, "laplacian": filters.LAPLACIAN}


def add_arguments(parser) -> None:
    parser.add_argument("image", type=Path)
    parser.add_argument("--kernel", default="sobel_x",
                        help=f"{', '.join(NAMED)}, or a text file: rows of numbers, one block "
                             "per input channel separated by blank lines")
    parser.add_argument("--stride", type=int, default=1)
    parser.add_argument("--padding", default="valid", help="valid, same, or a number of pixels")
    parser.add_argument("--dilation", type=int, default=1)
    parser.add_argument("--mode", choices=("cross_correlation", "convolution"),
                        default="cross_correlation", help="convolution flips the kernel")
    parser.add_argument("--impl", choices=("im2col", "direct"), default="im2col")
    parser.add_argument("-o", "--output", type=Path, default=Path("conv.png"))


def read_kernel(spec: str) -> torch.Tensor:
    """A named kernel (k, k), or a text file of one (k, k) block per channel → (C, k, k)."""
    if spec in NAMED:
        return NAMED[spec]
    path = Path(spec)
    if not path.is_file():
        raise suggest(spec, NAMED, "kernel (nor a kernel file)")
    blocks = [[[float(v) for v in line.split()] for line in block.strip().splitlines()]
              for block in path.read_text().strip().split("\n\n")]
    try:
        kernel = torch.tensor(blocks)  # (C, kh, kw)
    except (ValueError, TypeError):
        raise CnnkitError(f"{path}: every row and block of a kernel file needs the same length") \
            from None
    return kernel[0] if len(kernel) == 1 else kernel


def _padding(text: str):
    if text in ("valid", "same"):
        return text
    try:
        return int(text)
    except ValueError:
        raise CnnkitError(f"--padding must be valid, same or a number of pixels, got '{text}'") \
            from None


def run(args) -> int:
    kernel = read_kernel(args.kernel)
    image = decode_image(args.image, None, None).float() / 255  # (C, H, W)
    channels = image.shape[0]
    if kernel.dim() == 2:  # the chapter's channel rule: one filter spans every input channel
        kernel = kernel.expand(channels, *kernel.shape)
    elif kernel.shape[0] != channels:
        raise CnnkitError(f"the kernel has {kernel.shape[0]} channels but {args.image} has "
                          f"{channels}: a filter must span exactly the image's channels")
    padding = _padding(args.padding)
    out = conv2d(image[None], kernel[None], stride=args.stride, padding=padding,
                 dilation=args.dilation, mode=args.mode, impl=args.impl)[0, 0]  # (H', W')
    # The rows of padding ops.conv2d applied (its own resolver): "same" pads d(k−1) in total, so
    # a dilated kernel gets more than (k−1)/2 a side, and an odd total puts the extra row below.
    kh, dil, stride = kernel.shape[-2], args.dilation, args.stride
    top, bottom = _resolve_padding(padding, (kh, kernel.shape[-1]), (stride, stride),
                                   (dil, dil))[:2]
    span = dil * (kh - 1)
    rows = (image.shape[1] + top + bottom - span - 1) // stride + 1
    pads = "2p − d(k−1)" if top == bottom else "p_top + p_bottom − d(k−1)"
    values = f"{2 * top}" if top == bottom else f"{top} + {bottom}"
    print(f"input {tuple(image.shape)} * kernel {tuple(kernel.shape)} → output {tuple(out.shape)}"
          f"   (⌊(n + {pads} − 1)/s⌋ + 1 = ⌊({image.shape[1]} + {values} − {span} − 1)/{stride}⌋"
          f" + 1 = {rows} rows)")
    from cnnkit.viz.edges import plot_conv  # noqa: PLC0415
    print(f"wrote {plot_conv(image, kernel, out, args, args.output)}")
    return 0
