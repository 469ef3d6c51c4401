"""2-D convolution from its definition: two implementations, hand-written gradients.

Convolution versus cross-correlation
------------------------------------
The chapter (`../shared/seed/cnn-chapter.md`) defines the convolution of an image I with a
kernel K as

    (I ∗ K)(x, y) = Σ_i Σ_j I(i, j) · K(x − i, y − j)  =  Σ_u Σ_v I(x − u, y − v) · K(u, v),

so the kernel is *flipped* (rotated by 180°) as it slides over the image. What `nn.Conv2d` — and
every deep-learning library — computes is the cross-correlation, with no flip:

    (I ⋆ K)(x, y) = Σ_u Σ_v I(x + u, y + v) · K(u, v).

For a kernel stored as K[0..k−1], the chapter's sum taken where the kernel lies inside the
(padded) image equals cross-correlation with `K.flip(-2, -1)`: the two differ only by the flip
(tests/ops/test_conv.py checks `mode="convolution"` against the literal double sum). They agree
for kernels symmetric under a 180° rotation (box blur, Gaussian, Laplacian) and differ in sign
for antisymmetric ones (Sobel, Prewitt). For a learned kernel the difference is immaterial — the
network simply learns the flipped kernel — which is why libraries skip the flip.

With stride s, dilation d, zero padding and G groups (each of the G slices of C/G input channels
feeds its own O/G filters), the quantity computed here for `mode="cross_correlation"` is

    out[n, o, y, x] = b[o] + Σ_c Σ_u Σ_v x_pad[n, g·C/G + c, y·s + u·d, x·s + v·d] · w[o, c, u, v]

with g = o // (O/G); `mode="convolution"` uses w flipped in its last two dimensions.

Implementations
---------------
* `impl="direct"`: the formula in code — one loop over the kernel taps (u, v); each tap multiplies
  a strided slice of the padded input by one column of weights. Slow, obviously right.
* `impl="im2col"`: every receptive field is copied into a column and one matrix multiply with the
  (O, C·kh·kw) weight does all the work (Chellapilla et al. 2006, "High performance convolutional
  neural networks for document processing"). The columns come from an `as_strided` view
  (`Tensor.unfold`, dilation by slicing the window) copied once straight into the layout
  (C·kh·kw, N·Ho·Wo): batch and positions side by side, so the forward, grad_weight and
  grad_input are each one GEMM per group instead of N small ones. `F.unfold` would be simpler,
  but on the CPU it measured 2–5× slower than the strided copy and returns (N, C·kh·kw, L),
  which forces batched small matmuls and a sum over the batch for grad_weight. col2im (the
  adjoint, for grad_input) scatters the columns back through the same strided view of a zero
  gradient image, one strided add per kernel tap.

Both are `torch.autograd.Function`s whose backward computes grad_input, grad_weight and
grad_bias explicitly (first order only: `once_differentiable`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

# Under autocast (bf16 training) the hand-written kernels compute in float32: their backward
# multiplies saved tensors with incoming gradients, which must share one dtype.
_FLOAT32_UNDER_AUTOCAST = torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.float32)

from cnnkit.utils import CnnkitError, suggest

Pair = tuple[int, int]
Pad4 = tuple[int, int, int, int]  # (top, bottom, left, right)

MODES = ("cross_correlation", "convolution")


# --- argument handling ------------------------------------------------------------------------

def _pair(value, name: str) -> Pair:
    """An int or a pair of ints as (height, width)."""
    if isinstance(value, int):
        return value, value
    if isinstance(value, (tuple, list)) and len(value) == 2 and \
            all(isinstance(v, int) for v in value):
        return int(value[0]), int(value[1])
    raise CnnkitError(f"{name} must be an int or a pair of ints, got {value!r}")


def conv_output_size(size: int, kernel: int, stride: int = 1, padding: int = 0,
                     dilation: int = 1) -> int:
    """Output length of a convolution or pooling along one axis: ⌊(n + 2p − d(k−1) − 1)/s⌋ + 1.

    A dilated kernel spans d(k−1)+1 pixels; it fits ⌊(n + 2p − span)/s⌋ times after its first
    position. Raises CnnkitError when the kernel does not fit even once.
    """
    if stride < 1:
        raise CnnkitError(f"stride must be positive, got {stride}")
    if dilation < 1:
        raise CnnkitError(f"dilation must be positive, got {dilation}")
    span = dilation * (kernel - 1) + 1
    if span > size + 2 * padding:
        raise CnnkitError(f"kernel spanning {span} pixels is larger than the padded input "
                          f"({size} + 2·{padding}); use a smaller kernel or more padding")
    return (size + 2 * padding - span) // stride + 1


def _padding(padding, kernel: Pair, stride: Pair, dilation: Pair) -> Pad4:
    """Resolve "valid", "same", an int or a pair into (top, bottom, left, right) zero padding."""
    if isinstance(padding, str):
        if padding == "valid":
            return 0, 0, 0, 0
        if padding == "same":
            if stride != (1, 1):
                raise CnnkitError("padding='same' needs stride 1 (as in torch); give an int "
                                  "padding for a strided convolution")
            # total d(k−1); an odd total puts the extra row/column at the bottom/right, like torch
            th, tw = (d * (k - 1) for d, k in zip(dilation, kernel))
            return th // 2, th - th // 2, tw // 2, tw - tw // 2
        raise suggest(padding, ["valid", "same"], "padding")
    ph, pw = _pair(padding, "padding")
    if ph < 0 or pw < 0:
        raise CnnkitError(f"padding must be non-negative, got {padding!r}")
    return ph, ph, pw, pw


def _check(x: torch.Tensor, weight: torch.Tensor, bias, stride: Pair, pad: Pad4, dilation: Pair,
           groups: int) -> Pair:
    """Validate shapes and hyper-parameters; return the output size (Ho, Wo)."""
    if x.dim() != 4:
        raise CnnkitError(f"conv2d expects an input of shape (N, C, H, W) or (C, H, W), "
                          f"got {tuple(x.shape)}")
    if weight.dim() != 4:
        raise CnnkitError(f"conv2d expects a weight of shape (O, C/groups, kh, kw), "
                          f"got {tuple(weight.shape)}")
    if min(stride) < 1:
        raise CnnkitError(f"stride must be positive, got {stride}")
    if min(dilation) < 1:
        raise CnnkitError(f"dilation must be positive, got {dilation}")
    if groups < 1:
        raise CnnkitError(f"groups must be positive, got {groups}")
    c, (o, cg) = x.shape[1], weight.shape[:2]
    if c % groups:
        raise CnnkitError(f"{c} input channels are not divisible by groups={groups}")
    if o % groups:
        raise CnnkitError(f"{o} output channels (filters) are not divisible by groups={groups}")
    if cg * groups != c:
        raise CnnkitError(f"channel mismatch: the input has {c} channels but the weight expects "
                          f"{cg * groups} ({cg} per group × groups={groups}); the kernel must "
                          f"span all input channels")
    if bias is not None and tuple(bias.shape) != (o,):
        raise CnnkitError(f"bias must have shape ({o},), got {tuple(bias.shape)}")
    (h, w), (kh, kw) = x.shape[2:], weight.shape[2:]
    span_h, span_w = dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1
    hp, wp = h + pad[0] + pad[1], w + pad[2] + pad[3]
    if span_h > hp or span_w > wp:
        raise CnnkitError(f"kernel {span_h}×{span_w} (dilation included) is larger than the padded "
                          f"input {hp}×{wp}; use a smaller kernel or more padding")
    return (hp - span_h) // stride[0] + 1, (wp - span_w) // stride[1] + 1


# --- im2col ------------------------------------------------------------------------------------

def _windows(x: torch.Tensor, kernel: Pair, stride: Pair, dilation: Pair) -> torch.Tensor:
    """Every receptive field of a padded (A, B, Hp, Wp) tensor as a strided view, no copy:
    (A, B, Ho, Wo, kh, kw). Writing into the view writes into x (col2im uses that)."""
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    spans = x.unfold(2, dh * (kh - 1) + 1, sh)                  # (A, B, Ho, Wp, span_h)
    spans = spans.unfold(3, dw * (kw - 1) + 1, sw)              # (A, B, Ho, Wo, span_h, span_w)
    return spans[..., ::dh, ::dw]                               # (A, B, Ho, Wo, kh, kw)


def _prepare(x, weight, bias, stride, pad, dilation, groups, flip):
    """What both algorithms start from: the kernel (flipped for true convolution), the input
    zero-padded (N, C, Hp, Wp), and the checked output size (Ho, Wo)."""
    w = weight.flip(-2, -1) if flip else weight
    out_size = _check(x, w, bias, stride, pad, dilation, groups)
    xp = F.pad(x, (pad[2], pad[3], pad[0], pad[1])) if any(pad) else x  # (N, C, Hp, Wp)
    return w, xp, out_size


class _Im2colConv2d(torch.autograd.Function):
    @staticmethod
    @_FLOAT32_UNDER_AUTOCAST
    def forward(ctx, x, weight, bias, stride, pad, dilation, groups, flip):
        w, xp, (ho, wo) = _prepare(x, weight, bias, stride, pad, dilation, groups, flip)
        n = x.shape[0]
        o, cg, kh, kw = w.shape
        fields = _windows(xp, (kh, kw), stride, dilation)       # (N, C, Ho, Wo, kh, kw)
        # the one copy: receptive fields as columns, batch and positions side by side
        cols = fields.permute(1, 4, 5, 0, 2, 3)                 # (C, kh, kw, N, Ho, Wo)
        cols = cols.reshape(groups, cg * kh * kw, n * ho * wo)  # (G, Cg·kh·kw, N·L)
        w_g = w.reshape(groups, o // groups, cg * kh * kw)      # (G, O/G, Cg·kh·kw)
        out = torch.matmul(w_g, cols)                           # (G, O/G, N·L)
        out = out.view(o, n, ho, wo).transpose(0, 1)            # (N, O, Ho, Wo), a view
        out = out.contiguous()
        if bias is not None:
            out += bias.view(1, o, 1, 1)
        ctx.save_for_backward(cols, w_g)
        ctx.conf = (x.shape, xp.shape, w.shape, stride, pad, dilation, groups, flip,
                    bias is not None)
        return out

    @staticmethod
    @once_differentiable
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, grad_out):
        cols, w_g = ctx.saved_tensors
        x_shape, xp_shape, w_shape, stride, pad, dilation, groups, flip, has_bias = ctx.conf
        n, c, h, wd = x_shape
        o, cg, kh, kw = w_shape
        ho, wo = grad_out.shape[2:]
        g = grad_out.transpose(0, 1)                            # (O, N, Ho, Wo)
        g = g.reshape(groups, o // groups, n * ho * wo)         # (G, O/G, N·L)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_cols = torch.matmul(w_g.transpose(1, 2), g)    # (G, Cg·kh·kw, N·L)
            grad_cols = grad_cols.view(c, kh, kw, n, ho, wo)    # (C, kh, kw, N, Ho, Wo)
            # col2im: each column entry goes back to the pixel it was copied from, overlapping
            # fields summing; one strided add per kernel tap
            grad_xp = grad_out.new_zeros(c, n, *xp_shape[2:])   # (C, N, Hp, Wp)
            fields = _windows(grad_xp, (kh, kw), stride, dilation)  # (C, N, Ho, Wo, kh, kw)
            for u in range(kh):
                for v in range(kw):
                    fields[..., u, v] += grad_cols[:, u, v]
            grad_x = grad_xp.transpose(0, 1)                    # (N, C, Hp, Wp)
            grad_x = grad_x[:, :, pad[0]:pad[0] + h, pad[2]:pad[2] + wd]  # (N, C, H, W)
        if ctx.needs_input_grad[1]:
            # Σ over batch and positions of grad_out ⊗ receptive field: one GEMM per group
            grad_w = torch.matmul(g, cols.transpose(1, 2))      # (G, O/G, Cg·kh·kw)
            grad_w = grad_w.reshape(o, cg, kh, kw)              # (O, Cg, kh, kw)
            if flip:
                grad_w = grad_w.flip(-2, -1)
        if has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_out.sum((0, 2, 3))
        return grad_x, grad_w, grad_b, None, None, None, None, None


# --- direct (sliding window) -------------------------------------------------------------------

def _tap(u: int, v: int, out_hw: Pair, stride: Pair, dilation: Pair):
    """Index of the input pixels that kernel tap (u, v) touches, one per output position."""
    (ho, wo), (sh, sw), (dh, dw) = out_hw, stride, dilation
    rows = slice(u * dh, u * dh + sh * (ho - 1) + 1, sh)
    cols = slice(v * dw, v * dw + sw * (wo - 1) + 1, sw)
    return (..., rows, cols)


class _DirectConv2d(torch.autograd.Function):
    @staticmethod
    @_FLOAT32_UNDER_AUTOCAST
    def forward(ctx, x, weight, bias, stride, pad, dilation, groups, flip):
        w, xp, (ho, wo) = _prepare(x, weight, bias, stride, pad, dilation, groups, flip)
        n = x.shape[0]
        o, cg, kh, kw = w.shape
        xp_g = xp.reshape(n, groups, cg, *xp.shape[2:])          # (N, G, Cg, Hp, Wp)
        w_g = w.reshape(groups, o // groups, cg, kh, kw)         # (G, O/G, Cg, kh, kw)
        out = x.new_zeros(n, groups, o // groups, ho, wo)        # (N, G, O/G, Ho, Wo)
        # out[y, x] = Σ_{u,v} Σ_c x_pad[c, y·s + u·d, x·s + v·d] · w[o, c, u, v], tap by tap
        for u in range(kh):
            for v in range(kw):
                patch = xp_g[_tap(u, v, (ho, wo), stride, dilation)]  # (N, G, Cg, Ho, Wo)
                out += torch.einsum("ngchw,goc->ngohw", patch, w_g[..., u, v])
        out = out.view(n, o, ho, wo)                             # (N, O, Ho, Wo)
        if bias is not None:
            out = out + bias.view(1, o, 1, 1)
        ctx.save_for_backward(xp_g, w_g)
        ctx.conf = (x.shape, stride, pad, dilation, flip, bias is not None)
        return out

    @staticmethod
    @once_differentiable
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, grad_out):
        xp_g, w_g = ctx.saved_tensors
        (n, c, h, wd), stride, pad, dilation, flip, has_bias = ctx.conf
        groups, og, cg, kh, kw = w_g.shape
        ho, wo = grad_out.shape[2:]
        g = grad_out.reshape(n, groups, og, ho, wo)              # (N, G, O/G, Ho, Wo)
        grad_xp, grad_w = torch.zeros_like(xp_g), torch.zeros_like(w_g)
        # each tap contributed patch·w[u, v]: its gradient flows back to exactly that patch
        for u in range(kh):
            for v in range(kw):
                tap = _tap(u, v, (ho, wo), stride, dilation)
                grad_w[..., u, v] = torch.einsum("ngohw,ngchw->goc", g, xp_g[tap])
                grad_xp[tap] += torch.einsum("ngohw,goc->ngchw", g, w_g[..., u, v])
        grad_x = grad_xp.view(n, c, *xp_g.shape[3:])             # (N, C, Hp, Wp)
        grad_x = grad_x[:, :, pad[0]:pad[0] + h, pad[2]:pad[2] + wd]  # (N, C, H, W)
        grad_w = grad_w.view(groups * og, cg, kh, kw)            # (O, Cg, kh, kw)
        if flip:
            grad_w = grad_w.flip(-2, -1)
        grad_b = grad_out.sum((0, 2, 3)) if has_bias else None
        return grad_x, grad_w, grad_b, None, None, None, None, None


_IMPLS = {"im2col": _Im2colConv2d, "direct": _DirectConv2d}


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           stride=1, padding=0, dilation=1, groups: int = 1, *,
           mode: str = "cross_correlation", impl: str = "im2col") -> torch.Tensor:
    """2-D convolution of x (N, C, H, W) or (C, H, W) with weight (O, C/groups, kh, kw).

    Same arguments and result as `F.conv2d` for `mode="cross_correlation"`; `mode="convolution"`
    flips the kernel first (the chapter's formula, see the module docstring). `padding` is
    "valid", "same" (stride 1 only), an int or (ph, pw) — zeros, like torch. `impl` picks the
    im2col + matmul implementation or the direct sliding-window reference. Bad shapes or
    hyper-parameters raise CnnkitError.
    """
    if mode not in MODES:
        raise suggest(mode, MODES, "convolution mode")
    if impl not in _IMPLS:
        raise suggest(impl, _IMPLS, "conv2d implementation")
    unbatched = x.dim() == 3
    if unbatched:
        x = x.unsqueeze(0)                                       # (1, C, H, W)
    stride, dilation = _pair(stride, "stride"), _pair(dilation, "dilation")
    if weight.dim() != 4:
        raise CnnkitError(f"conv2d expects a weight of shape (O, C/groups, kh, kw), "
                          f"got {tuple(weight.shape)}")
    pad = _padding(padding, tuple(weight.shape[2:]), stride, dilation)
    _check(x, weight, bias, stride, pad, dilation, groups)  # fail before autograd sees the call
    out = _IMPLS[impl].apply(x, weight, bias, stride, pad, dilation, groups, mode == "convolution")
    return out.squeeze(0) if unbatched else out
