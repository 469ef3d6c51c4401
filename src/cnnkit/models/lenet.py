"""LeNet exactly as the chapter (`../shared/seed/cnn-chapter.md`) writes it.

(CONV ⇒ RELU ⇒ POOL) × 2 ⇒ FC ⇒ RELU ⇒ FC ⇒ SOFTMAX, after LeCun et al. 1998,
"Gradient-based learning applied to document recognition".
"""
from __future__ import annotations

import torch
from torch import nn

from cnnkit.layers.scratch import ScratchConv2d, ScratchMaxPool2d
from cnnkit.models._registry import register_model
from cnnkit.utils import suggest

# backend -> (conv class, max-pool class); "scratch" computes with cnnkit.ops, same state_dict
_BACKENDS = {"torch": (nn.Conv2d, nn.MaxPool2d), "scratch": (ScratchConv2d, ScratchMaxPool2d)}


class LeNet(nn.Module):
    """conv 20@5×5 → ReLU → maxpool 2/2 → conv 50@5×5 → ReLU → maxpool 2/2 → fc 800→500 → ReLU →
    fc 500→classes → LogSoftmax.

    The output is log-probabilities, as in the chapter; cross-entropy on it equals the NLL loss
    because log_softmax is idempotent. `img_size` other than 28 changes only fc1's input width.
    `backend="scratch"` builds the convs and pools from `cnnkit.layers.scratch` (cnnkit's own
    ops): same parameters, created in the same order, so the same seed gives the same weights.
    """

    def __init__(self, num_channels: int = 1, classes: int = 10, *, img_size: int = 28,
                 backend: str = "torch"):
        super().__init__()
        if backend not in _BACKENDS:
            raise suggest(backend, _BACKENDS, "backend")
        conv, pool = _BACKENDS[backend]
        self.num_classes, self.in_chans = classes, num_channels
        self.conv1 = conv(num_channels, 20, kernel_size=(5, 5))
        self.relu1 = nn.ReLU()
        self.maxpool1 = pool(kernel_size=(2, 2), stride=(2, 2))
        self.conv2 = conv(20, 50, kernel_size=(5, 5))
        self.relu2 = nn.ReLU()
        self.maxpool2 = pool(kernel_size=(2, 2), stride=(2, 2))
        side = ((img_size - 4) // 2 - 4) // 2  # two valid 5×5 convs, two 2/2 pools: 28 → 4
        if side < 1:
            raise ValueError(f"LeNet needs images of at least 16×16 pixels, got {img_size}")
        self.fc1 = nn.Linear(50 * side * side, 500)  # 800 for 28×28 inputs
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(500, classes)
        self.log_softmax = nn.LogSoftmax(dim=1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool1(self.relu1(self.conv1(x)))
        return self.maxpool2(self.relu2(self.conv2(x)))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu3(self.fc1(torch.flatten(x, 1)))
        return self.log_softmax(self.fc2(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model(input_size=(1, 28, 28), fixed_input_size=True)
def lenet(num_classes: int = 10, in_chans: int = 1, img_size: int = 28, backend: str = "torch",
          **kwargs) -> LeNet:
    return LeNet(in_chans, num_classes, img_size=img_size, backend=backend, **kwargs)
