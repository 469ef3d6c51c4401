"""The one conv → norm → activation block every model uses (timm `ConvNormAct`, STYLE.md habit 3)."""
from __future__ import annotations

from typing import Callable

from torch import nn

from cnnkit.utils import suggest

_NORMS: dict[str, Callable[[int], nn.Module]] = {
    "batchnorm": nn.BatchNorm2d,
    "groupnorm": lambda c: nn.GroupNorm(min(32, c), c),
    "instancenorm": nn.InstanceNorm2d,
    "none": lambda c: nn.Identity(),
}
_ACTS: dict[str, Callable[[], nn.Module]] = {
    "relu": lambda: nn.ReLU(inplace=True),
    "relu6": lambda: nn.ReLU6(inplace=True),
    "silu": lambda: nn.SiLU(inplace=True),
    "gelu": nn.GELU,
    "hardswish": lambda: nn.Hardswish(inplace=True),
    "leaky_relu": lambda: nn.LeakyReLU(0.2, inplace=True),
    "none": nn.Identity,
}


def get_norm(norm: str | type[nn.Module] | None, channels: int) -> nn.Module:
    """Resolve a norm given as a name ('batchnorm', 'groupnorm', ...), a class, or None."""
    if norm is None:
        return nn.Identity()
    if isinstance(norm, str):
        if norm not in _NORMS:
            raise suggest(norm, _NORMS, "norm")
        return _NORMS[norm](channels)
    return norm(channels)


def get_act(act: str | type[nn.Module] | None) -> nn.Module:
    """Resolve an activation given as a name ('relu', 'silu', ...), a class, or None."""
    if act is None:
        return nn.Identity()
    if isinstance(act, str):
        if act not in _ACTS:
            raise suggest(act, _ACTS, "activation")
        return _ACTS[act]()
    return act()


class ConvNormAct(nn.Sequential):
    """Conv2d → norm → activation (→ dropout), children named `conv`, `bn`, `act`, `drop`.

    `order` rearranges the parts: the chapter's two layer-arrangement schemes are
    ("conv", "act", "drop", "norm") (scheme 1) and ("conv", "norm", "act", "drop") (scheme 2).
    `padding=None` keeps the spatial size for odd kernels ("same" padding at stride 1).
    Models whose reference layout names the children differently (torchvision's `0`, `1`, `2`)
    pass `names=("0", "1", "2")` so checkpoints load unchanged.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple = 3, *,
                 stride: int | tuple = 1, padding: int | tuple | None = None, dilation: int = 1,
                 groups: int = 1, bias: bool | None = None, norm="batchnorm", act="relu",
                 drop_rate: float = 0.0, order: tuple[str, ...] = ("conv", "norm", "act", "drop"),
                 names: tuple[str, str, str] = ("conv", "bn", "act")):
        super().__init__()
        if padding is None:
            k = kernel_size if isinstance(kernel_size, tuple) else (kernel_size, kernel_size)
            padding = tuple((kk - 1) // 2 * dilation for kk in k)
        has_norm = norm is not None and norm != "none"
        if bias is None:  # a norm right after the conv makes its bias redundant
            bias = not has_norm or order.index("norm") != order.index("conv") + 1
        conv_name, norm_name, act_name = names
        parts = {"conv": (conv_name, nn.Conv2d(in_channels, out_channels, kernel_size,
                                               stride=stride, padding=padding, dilation=dilation,
                                               groups=groups, bias=bias))}
        if has_norm:
            parts["norm"] = (norm_name, get_norm(norm, out_channels))
        if act is not None and act != "none":
            parts["act"] = (act_name, get_act(act))
        if drop_rate > 0:
            parts["drop"] = ("drop", nn.Dropout(drop_rate))
        for part in order:
            if part in parts:
                self.add_module(*parts[part])
        self.out_channels = out_channels
