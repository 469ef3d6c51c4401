"""A model summary in the layout of torchinfo's `summary()` (https://github.com/TylerYep/torchinfo),
itself after Keras' `model.summary()`: one row per module call with its output shape, parameters and
multiply-accumulates, then the totals and a memory estimate.

    print(format_summary(summarize(create_model("lenet"), (1, 28, 28))))

Mult-adds (MACs) are counted **per image** by the torchinfo convention: only layers that multiply
activations by weights count, everything else (norms, activations, pooling, additions) is 0 —
elementwise work is memory-bound and small next to the convolutions.

    Conv1d/2d/3d           out_elements × (in_channels / groups) × prod(kernel_size)
    ConvTranspose1d/2d/3d  in_elements × (out_channels / groups) × prod(kernel_size)
    Linear                 out_elements × in_features (extra leading dims, e.g. tokens, included)
    MultiheadAttention     projections  Lq·E·E (Q) + Lk·kdim·E (K) + Lk·vdim·E (V) + Lq·E·E (out)
                           + attention  Lq·Lk·E (Q·Kᵀ, all heads) + Lq·Lk·E (A·V)

Biases are not counted. Matmuls done with functions inside a module's `forward` (`torch.matmul`,
`F.scaled_dot_product_attention`) are invisible to module hooks and count 0, as in torchinfo;
`nn.MultiheadAttention` is counted by the formula above because its own matmuls are functional.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from cnnkit.utils import CnnkitError

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_TRANSPOSED_CONVS = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


@dataclass
class LayerRow:
    """One module call. `params` and `macs` include the rows folded into it (deeper than `depth`)."""
    name: str            # attribute path in the model ("layer1.0.conv1"); "" for the model itself
    type: str            # class name ("Conv2d")
    depth: int           # 0 for the model, 1 for its children, ...
    output_shape: tuple  # shape of the (first) output tensor, batch included; () if none
    params: int          # parameters owned by this row, each parameter counted once in the model
    macs: int            # multiply-accumulates per image


@dataclass
class Summary:
    """`summarize`'s result; the totals are over the whole model, whatever the displayed depth."""
    rows: list[LayerRow]
    input_size: tuple        # the input the forward pass ran on, batch included: (N, C, H, W)
    total_params: int
    trainable_params: int
    total_macs: int          # per image
    input_bytes: int = 0
    activation_bytes: int = 0  # outputs of parameterised leaf layers, ×2 for their gradients
    param_bytes: int = 0


@dataclass
class _Call:
    module: nn.Module
    depth: int
    parent: int  # index of the calling module's record, -1 for the model itself
    output_shape: tuple = ()
    output_bytes: int = 0
    macs: int = 0
    params: int = 0
    has_children: bool = False


# --- counting ---

def _per_image(t: torch.Tensor, batched_ndim: int) -> int:
    """Elements of one sample: a tensor with `batched_ndim` dims carries the batch first."""
    return t.numel() // t.shape[0] if t.dim() >= batched_ndim and t.shape[0] else t.numel()


def _first_tensor(output) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return next((t for t in map(_first_tensor, output) if t is not None), None)
    if isinstance(output, dict):
        return _first_tensor(list(output.values()))
    return None


def _arg(args: tuple, kwargs: dict, index: int, name: str):
    return args[index] if len(args) > index else kwargs[name]


def _macs_per_image(module: nn.Module, args: tuple, kwargs: dict, output) -> int:
    if isinstance(module, _CONVS):
        out = _first_tensor(output)  # (N, C_out, *spatial) or unbatched (C_out, *spatial)
        per_output = module.in_channels // module.groups * math.prod(module.kernel_size)
        return _per_image(out, len(module.kernel_size) + 2) * per_output
    if isinstance(module, _TRANSPOSED_CONVS):
        # A transposed conv scatters each input element into (out_channels / groups) × kernel outputs.
        x = _arg(args, kwargs, 0, "input")  # (N, C_in, *spatial)
        per_input = module.out_channels // module.groups * math.prod(module.kernel_size)
        return _per_image(x, len(module.kernel_size) + 2) * per_input
    if isinstance(module, nn.Linear):
        return _per_image(_first_tensor(output), 2) * module.in_features  # (N, ..., out_features)
    if isinstance(module, nn.MultiheadAttention):
        query, key = _arg(args, kwargs, 0, "query"), _arg(args, kwargs, 1, "key")
        # (N, L, E) if batch_first else (L, N, E); unbatched (L, E)
        seq_dim = 1 if module.batch_first and query.dim() == 3 else 0
        lq, lk, e = query.shape[seq_dim], key.shape[seq_dim], module.embed_dim
        projections = lq * e * e + lk * module.kdim * e + lk * module.vdim * e + lq * e * e
        # Each of the h heads does Lq×Lk×(E/h) for the scores Q·Kᵀ and as many for A·V.
        return projections + 2 * lq * lk * e
    return 0


# --- tracing ---

def _trace(model: nn.Module, x: torch.Tensor) -> list[_Call]:
    """Run `model(x)` with hooks on every module; records come in call order, parents first."""
    calls: list[_Call] = []
    stack: list[int] = []  # indices of the calls currently running

    def before(module, args, kwargs):
        parent = stack[-1] if stack else -1
        if parent >= 0:
            calls[parent].has_children = True
        calls.append(_Call(module, depth=len(stack), parent=parent))
        stack.append(len(calls) - 1)

    def after(module, args, kwargs, output):
        call = calls[stack.pop()]
        out = _first_tensor(output)
        if out is not None:
            call.output_shape = tuple(out.shape)
            call.output_bytes = out.numel() * out.element_size()
        call.macs = _macs_per_image(module, args, kwargs, output)

    handles = []
    for module in model.modules():
        handles.append(module.register_forward_pre_hook(before, with_kwargs=True))
        handles.append(module.register_forward_hook(after, with_kwargs=True))
    try:
        model(x)
    finally:
        for handle in handles:
            handle.remove()
    return calls


def _assign_params(model: nn.Module, calls: list[_Call]) -> None:
    """Give each parameter, once, to the first call of the nearest called module that holds it.

    Modules never called as modules (MultiheadAttention's `out_proj`, whose weight is used
    functionally) hand their parameters up to their parent, so the rows add up to the total.
    """
    first_call: dict[int, int] = {}
    for i, call in enumerate(calls):
        first_call.setdefault(id(call.module), i)
    by_name = dict(model.named_modules())
    seen: set[int] = set()
    for name, module in by_name.items():
        owner = name
        while id(by_name[owner]) not in first_call:  # the model itself is always called
            owner = owner.rpartition(".")[0]
        call = calls[first_call[id(by_name[owner])]]
        for p in module.parameters(recurse=False):
            if id(p) not in seen:  # tied weights count once
                seen.add(id(p))
                call.params += p.numel()


def summarize(model: nn.Module, input_size: tuple[int, ...], *, depth: int = 3,
              batch_size: int = 1) -> Summary:
    """Trace one forward pass of `model` on a random (batch_size, *input_size) input.

    Runs in eval mode under `torch.no_grad()` and restores the model's mode afterwards. Rows deeper
    than `depth` are folded into their ancestor at `depth`; totals are always over the whole model.
    """
    input_size = tuple(input_size)
    if not input_size or not all(isinstance(s, int) and s > 0 for s in input_size):
        raise CnnkitError(f"input_size must be positive integers like (3, 224, 224), got {input_size}")
    if depth < 0 or batch_size < 1:
        raise CnnkitError(f"need depth >= 0 and batch_size >= 1, got depth={depth}, "
                          f"batch_size={batch_size}")
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    x = torch.randn(batch_size, *input_size, device=device, dtype=dtype)

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            calls = _trace(model, x)
    except Exception as err:  # a wrong input size is the usual cause: say so in one line
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CnnkitError(f"{type(model).__name__} fails on an input of shape {tuple(x.shape)} "
                          f"({detail}); pass the input_size (C, H, W) the model expects") from err
    finally:
        model.train(was_training)
    _assign_params(model, calls)

    params = [c.params for c in calls]
    macs = [c.macs for c in calls]
    for i, call in enumerate(calls):
        if call.depth > depth:  # fold into the ancestor that is shown
            j = call.parent
            while calls[j].depth > depth:
                j = calls[j].parent
            params[j] += call.params
            macs[j] += call.macs
    names = {id(m): n for n, m in reversed(list(model.named_modules(remove_duplicate=False)))}
    rows = [LayerRow(names.get(id(c.module), ""), type(c.module).__name__, c.depth, c.output_shape,
                     params[i], macs[i])
            for i, c in enumerate(calls) if c.depth <= depth]

    all_params = list(model.parameters())
    return Summary(
        rows=rows, input_size=tuple(x.shape),
        total_params=sum(p.numel() for p in all_params),
        trainable_params=sum(p.numel() for p in all_params if p.requires_grad),
        total_macs=sum(c.macs for c in calls),
        input_bytes=x.numel() * x.element_size(),
        # torchinfo's estimate: each parameterised leaf keeps its output for backward, plus a gradient
        activation_bytes=sum(2 * c.output_bytes for c in calls
                             if not c.has_children and any(True for _ in c.module.parameters())),
        param_bytes=sum(p.numel() * p.element_size() for p in all_params),
    )


def count_macs(model: nn.Module, input_size: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass on one (C, H, W) image (see the module docstring)."""
    return summarize(model, input_size, depth=0).total_macs


# --- formatting ---

_COL = 25  # torchinfo's column width


def _scaled(num: float) -> tuple[str, float]:
    for unit, factor in (("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if num >= factor:
            return unit, num / factor
    return "M", num / 1e6


def format_summary(s: Summary, *, var_names: bool = False) -> str:
    """The torchinfo table: `Layer (type:depth-idx)`, Output Shape, Param #, Mult-Adds, totals.

    `var_names=True` adds each layer's attribute name: `Conv2d (conv1): 1-1`.
    """
    labels, counters = [], {}
    for row in s.rows:
        if row.depth == 0:
            labels.append(row.type)
            continue
        counters[row.depth] = counters.get(row.depth, 0) + 1  # torchinfo numbers each depth globally
        name = f" ({row.name.rpartition('.')[2]})" if var_names and row.name else ""
        tree = "├─" if row.depth == 1 else "│    " * (row.depth - 1) + "└─"
        labels.append(f"{tree}{row.type}{name}: {row.depth}-{counters[row.depth]}")
    width = max([40] + [math.ceil((len(lab) + 1) / 5) * 5 for lab in labels])

    def line(*cells: str) -> str:
        return (f"{cells[0]:<{width}} " + "".join(f"{c:<{_COL}} " for c in cells[1:])).rstrip()

    def count(n: int) -> str:
        return f"{n:,}" if n else "--"

    divider = "=" * (width + 3 * _COL)
    header = "Layer (type (var_name):depth-idx)" if var_names else "Layer (type:depth-idx)"
    lines = [divider, line(header, "Output Shape", "Param #", "Mult-Adds"), divider]
    lines += [line(lab, str(list(r.output_shape)) if r.output_shape else "--", count(r.params),
                   count(r.macs)) for lab, r in zip(labels, s.rows)]
    unit, macs = _scaled(s.total_macs)
    mb = 1e6
    total_mb = (s.input_bytes + s.activation_bytes + s.param_bytes) / mb
    lines += [
        divider,
        f"Total params: {s.total_params:,}",
        f"Trainable params: {s.trainable_params:,}",
        f"Non-trainable params: {s.total_params - s.trainable_params:,}",
        f"Total mult-adds ({unit}): {macs:.2f}",
        divider,
        f"Input size (MB): {s.input_bytes / mb:.2f}",
        f"Forward/backward pass size (MB): {s.activation_bytes / mb:.2f}",
        f"Params size (MB): {s.param_bytes / mb:.2f}",
        f"Estimated Total Size (MB): {total_mb:.2f}",
        divider,
    ]
    return "\n".join(lines)


__all__ = ["LayerRow", "Summary", "summarize", "format_summary", "count_macs"]
