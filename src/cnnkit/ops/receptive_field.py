"""Receptive field and jump of every convolution and pooling layer of a model.

The arithmetic (Araujo, Norris & Sim 2019, "Computing Receptive Fields of Convolutional Neural
Networks", Distill; Dumoulin & Visin 2016, "A guide to convolution arithmetic"), per axis, from the
input (r = 1, j = 1, start = 0) through each layer with kernel k, stride s, padding p, dilation d:

    k_eff     = d·(k − 1) + 1                 pixels one dilated kernel spans
    r_out     = r_in + (k_eff − 1)·j_in       input pixels one output unit sees
    j_out     = j_in · s                      input pixels between neighbouring output units
    start_out = start_in + ((k_eff − 1)/2 − p)·j_in   centre of the first unit's field

Layers are found with forward hooks, so the order is the real execution order whatever the module
tree looks like, and their output sizes are the real ones. Which layer feeds which is read from the
autograd graph of that one forward pass: each layer starts from the layer that produced its input
(through any activations, norms, reshapes in between), not simply from the previous row. Limitation
for branching models (ResNet, Inception, U-Net): the result is one path, not a union of regions —
where branches merge (a residual sum, a concatenation) the branch with the widest receptive field
is followed, and its start is kept; a gate broadcast over the map (squeeze-and-excitation's
global pool → 1×1 convs → multiply) is not followed, although strictly it lets every unit see the
whole image. Only modules are seen: pooling called as a function (`F.max_pool2d(x, 3, 2)` in a
forward) is invisible, and the branch through it is then under-counted. Transposed convolutions
and up-sampling are not modelled.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from cnnkit.ops.conv import _padding, _pair
from cnnkit.utils import CnnkitError

Pair = tuple[int, int]

_LAYERS = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


@dataclass(frozen=True)
class RFRow:
    """One convolution or pooling layer; every spatial quantity is (height, width)."""
    name: str          # module path in the model, e.g. "layer1.0.conv1"
    layer: str         # class name
    kernel: Pair
    stride: Pair
    dilation: Pair
    padding: Pair      # leading (top, left) zero padding
    out_size: Pair     # output height, width for the given input size
    jump: Pair         # cumulative stride: input pixels between neighbouring outputs
    rf: Pair           # receptive field: input pixels one output unit sees
    start: tuple[float, float]  # centre of the first output unit's field, in input pixels


def _geometry(module: nn.Module, in_hw: Pair, out_hw: Pair) -> tuple[Pair, Pair, Pair, Pair]:
    """(kernel, stride, dilation, leading padding) of a hooked layer."""
    if isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
        # torch's window i spans [⌊i·n/m⌋, ⌈(i+1)·n/m⌉): exact when n is a multiple of m
        kernel = tuple(max(-(-(i + 1) * n // m) - i * n // m for i in range(m))
                       for n, m in zip(in_hw, out_hw))
        return kernel, tuple(n // m for n, m in zip(in_hw, out_hw)), (1, 1), (0, 0)
    kernel = _pair(module.kernel_size, "kernel_size")
    stride = kernel if module.stride is None else _pair(module.stride, "stride")
    dilation = _pair(getattr(module, "dilation", 1), "dilation")  # AvgPool2d has none
    pad = _padding(module.padding, kernel, stride, dilation)      # (top, bottom, left, right)
    return kernel, stride, dilation, (pad[0], pad[2])


def _parents(tensor: torch.Tensor, x: torch.Tensor, produced_by: dict) -> set[int] | None:
    """Indices of the hooked layers whose outputs reach `tensor` through the autograd graph
    without passing another hooked layer; an empty set means it comes straight from the model
    input `x`, None that the graph does not say (a detach or no_grad in between)."""
    if tensor is x:
        return set()
    stack, seen, found, reaches_input = [tensor.grad_fn], set(), set(), False
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if node in produced_by:
            found.add(produced_by[node])
        elif getattr(node, "variable", None) is x:  # AccumulateGrad of the input
            reaches_input = True
        else:
            stack.extend(fn for fn, _ in node.next_functions)
    return found if found or reaches_input else None


def _follow(parents: list[RFRow]) -> RFRow:
    """At a merge, the branch to follow: the widest receptive field, not counting 1×1 gates
    broadcast over a map (squeeze-and-excitation) when a branch with a real map is there."""
    maps = [r for r in parents if r.out_size != (1, 1)] or parents
    return max(maps, key=lambda r: r.rf[0] * r.rf[1])


def receptive_fields(model: nn.Module, input_size: Sequence[int]) -> list[RFRow]:
    """Run one forward pass of a zero image of `input_size` (C, H, W) — or (H, W), taking C from
    `model.in_chans` — and report every Conv2d / pooling layer in execution order.

    Works on any cnnkit model; scratch layers (`cnnkit.layers.scratch`) subclass the torch ones
    and are found too. The model's train/eval mode is restored afterwards.
    """
    size = tuple(int(s) for s in input_size)
    if len(size) == 2:
        size = (getattr(model, "in_chans", 1), *size)
    if len(size) != 3 or min(size) < 1:
        raise CnnkitError(f"input_size must be (C, H, W) or (H, W), got {tuple(input_size)}")
    calls: list[tuple[str, nn.Module, torch.Tensor, torch.Tensor]] = []

    def hook(name):
        def record(module, args, output):
            calls.append((name, module, args[0], output))
        return record

    handles = [m.register_forward_hook(hook(name)) for name, m in model.named_modules()
               if isinstance(m, _LAYERS)]
    param = next(model.parameters(), None)
    x = torch.zeros(1, *size, dtype=param.dtype if param is not None else torch.float32,
                    device=param.device if param is not None else None, requires_grad=True)
    was_training = model.training
    try:
        model.eval()  # no batch statistics or dropout from a zero image
        with torch.enable_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if not calls:
        raise CnnkitError(f"{type(model).__name__} has no Conv2d or pooling layer to report")

    produced_by = {out.grad_fn: i for i, (_, _, _, out) in enumerate(calls)
                   if out.grad_fn is not None}
    rows: list[RFRow] = []
    for i, (name, module, inp, out) in enumerate(calls):
        parents = _parents(inp, x, produced_by)
        if parents is None:  # graph broken: fall back to the sequential path
            parents = {i - 1} if i else set()
        if parents:
            prev = _follow([rows[p] for p in parents])
            r_in, j_in, s_in = prev.rf, prev.jump, prev.start
        else:
            r_in, j_in, s_in = (1, 1), (1, 1), (0.0, 0.0)
        in_hw, out_hw = tuple(inp.shape[-2:]), tuple(out.shape[-2:])
        kernel, stride, dilation, pad = _geometry(module, in_hw, out_hw)
        k_eff = [d * (k - 1) + 1 for d, k in zip(dilation, kernel)]
        rows.append(RFRow(
            name=name, layer=type(module).__name__, kernel=kernel, stride=stride,
            dilation=dilation, padding=pad, out_size=out_hw,
            jump=tuple(j * s for j, s in zip(j_in, stride)),
            rf=tuple(r + (k - 1) * j for r, k, j in zip(r_in, k_eff, j_in)),
            start=tuple(st + ((k - 1) / 2 - p) * j for st, k, p, j in zip(s_in, k_eff, pad, j_in)),
        ))
    return rows


def _fmt(pair) -> str:
    """5 for (5, 5), 5×3 otherwise; floats without a needless .0."""
    a, b = (f"{v:g}" if isinstance(v, float) else str(v) for v in pair)
    return a if a == b else f"{a}×{b}"


def format_receptive_fields(rows: Sequence[RFRow]) -> str:
    """The rows as an aligned text table, one line per layer."""
    header = ("layer", "type", "kernel", "stride", "dilation", "padding", "output", "jump", "rf",
              "start")
    table = [header] + [
        (r.name, r.layer, _fmt(r.kernel), _fmt(r.stride), _fmt(r.dilation), _fmt(r.padding),
         f"{r.out_size[0]}×{r.out_size[1]}", _fmt(r.jump), _fmt(r.rf), _fmt(r.start))
        for r in rows
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i < 2 else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(line, widths))).rstrip()
             for line in table]
    return "\n".join(lines)
