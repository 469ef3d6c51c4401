"""Max and average pooling from their definitions.

Pooling slides a kernel over each channel separately (the chapter: "applied to each channel
individually") and keeps one number per window: the maximum or the mean. Output size follows the
same formula as a convolution, `conv_output_size(n, k, s, p)` (floor mode, like torch's default).

* `max_pool2d`: padding counts as −∞, so it can never be the maximum. The gradient of a max is 1 at
  the arg-max and 0 elsewhere, so the backward routes each output gradient to the one input pixel
  that won its window (summing where overlapping windows share a winner). Ties go to the first
  position in row-major window order, as in torch.
* `avg_pool2d`: the mean over a window, padding counted as zeros (torch's default
  `count_include_pad=True`). That is exactly a depthwise convolution (groups = C) with the constant
  kernel 1/(kh·kw), so it reuses `conv2d` and its hand-written backward.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from cnnkit.ops.conv import _FLOAT32_UNDER_AUTOCAST, _pair, conv2d, conv_output_size
from cnnkit.utils import CnnkitError


def _pool_args(x: torch.Tensor, kernel_size, stride, padding, what: str):
    """Validate and resolve pooling arguments into (kernel, stride, padding) pairs."""
    if x.dim() != 4:
        raise CnnkitError(f"{what} expects an input of shape (N, C, H, W) or (C, H, W), "
                          f"got {tuple(x.shape)}")
    kernel = _pair(kernel_size, "kernel_size")
    stride = kernel if stride is None else _pair(stride, "stride")
    padding = _pair(padding, "padding")
    if min(kernel) < 1:
        raise CnnkitError(f"kernel_size must be positive, got {kernel_size!r}")
    if min(stride) < 1:
        raise CnnkitError(f"stride must be positive, got {stride}")
    if min(padding) < 0 or any(2 * p > k for p, k in zip(padding, kernel)):
        # torch's rule: with more padding a window could hold nothing but padding
        raise CnnkitError(f"padding must be between 0 and half the kernel size, got {padding} "
                          f"for kernel {kernel}")
    for n, k, s, p in zip(x.shape[2:], kernel, stride, padding):
        conv_output_size(n, k, s, p)  # raises when the kernel is larger than the padded input
    return kernel, stride, padding


class _MaxPool2d(torch.autograd.Function):
    @staticmethod
    @_FLOAT32_UNDER_AUTOCAST
    def forward(ctx, x, kernel, stride, padding):
        (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
        n, c, h, w = x.shape
        xp = F.pad(x, (pw, pw, ph, ph), value=float("-inf")) if ph or pw else x  # (N, C, Hp, Wp)
        hp, wp = xp.shape[2:]
        windows = xp.unfold(2, kh, sh).unfold(3, kw, sw)        # (N, C, Ho, Wo, kh, kw), a view
        ho, wo = windows.shape[2:4]
        # one copy with the taps outermost, so the max is a vectorised reduction over whole
        # (N, C, Ho, Wo) slabs — twice as fast on the CPU as reducing a trailing dim of 4
        taps = windows.permute(4, 5, 0, 1, 2, 3)                # (kh, kw, N, C, Ho, Wo)
        out, arg = taps.reshape(kh * kw, n, c, ho, wo).max(0)   # (N, C, Ho, Wo) each
        if ctx.needs_input_grad[0]:
            # flat index row·Wp + column in the padded input of every tap of every window
            tap = torch.arange(kh * kw, device=x.device)
            rows = torch.arange(ho, device=x.device).view(ho, 1, 1) * sh + tap // kw
            cols = torch.arange(wo, device=x.device).view(1, wo, 1) * sw + tap % kw
            offsets = (rows * wp + cols).expand(n, c, ho, wo, kh * kw)  # (N, C, Ho, Wo, kh·kw)
            ctx.save_for_backward(offsets.gather(-1, arg.unsqueeze(-1)))  # (N, C, Ho, Wo, 1)
        ctx.conf = (x.shape, (hp, wp), padding)
        return out

    @staticmethod
    @once_differentiable
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, grad_out):
        (winner,) = ctx.saved_tensors
        (n, c, h, w), (hp, wp), (ph, pw) = ctx.conf
        grad_xp = grad_out.new_zeros(n, c, hp * wp)             # (N, C, Hp·Wp)
        # scatter_add: overlapping windows (stride < kernel) may share a winner; both count
        grad_xp.scatter_add_(2, winner.reshape(n, c, -1), grad_out.reshape(n, c, -1))
        grad_x = grad_xp.view(n, c, hp, wp)[:, :, ph:ph + h, pw:pw + w]  # (N, C, H, W)
        return grad_x, None, None, None


def max_pool2d(x: torch.Tensor, kernel_size, stride=None, padding=0) -> torch.Tensor:
    """Per-channel maximum over each window of x (N, C, H, W) or (C, H, W); stride defaults to
    kernel_size, padding (at most half the kernel) counts as −∞. Same result and gradient as
    `F.max_pool2d`.
    """
    unbatched = x.dim() == 3
    x = x.unsqueeze(0) if unbatched else x                      # (N, C, H, W)
    kernel, stride, padding = _pool_args(x, kernel_size, stride, padding, "max_pool2d")
    out = _MaxPool2d.apply(x, kernel, stride, padding)
    return out.squeeze(0) if unbatched else out


def avg_pool2d(x: torch.Tensor, kernel_size, stride=None, padding=0) -> torch.Tensor:
    """Per-channel mean over each window of x (N, C, H, W) or (C, H, W), zero padding included in
    the count (torch's default `count_include_pad=True`). Same result and gradient as
    `F.avg_pool2d`.
    """
    unbatched = x.dim() == 3
    x = x.unsqueeze(0) if unbatched else x                      # (N, C, H, W)
    (kh, kw), stride, padding = _pool_args(x, kernel_size, stride, padding, "avg_pool2d")
    c = x.shape[1]
    # one constant filter per channel, each seeing only its own channel (groups = C)
    weight = x.new_full((c, 1, kh, kw), 1.0 / (kh * kw))        # (C, 1, kh, kw)
    out = conv2d(x, weight, stride=stride, padding=padding, groups=c)
    return out.squeeze(0) if unbatched else out
