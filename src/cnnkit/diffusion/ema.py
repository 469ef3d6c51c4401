"""An exponential moving average of a model's weights, the copy that diffusion models sample with.

Ho et al. 2020 (https://arxiv.org/abs/2006.11239, appendix B) sample from an EMA with decay
0.9999; averaging over the last ~1/(1 − decay) steps smooths out the noise of the ε-prediction
gradient, which otherwise shows directly in the samples.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """θ_ema ← d·θ_ema + (1 − d)·θ after each `update()`, with the warm-up
    d = min(decay, (1 + n)/(10 + n)) of TensorFlow's ExponentialMovingAverage (n: updates so far),
    so that a short run's average is not dominated by the random initialisation.

    `ema.model` is a frozen copy in eval mode, ready for sampling; buffers (none in a GroupNorm
    U-Net, running statistics elsewhere) are copied, not averaged.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.source, self.decay, self.num_updates = model, decay, 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    @torch.no_grad()
    def update(self) -> None:
        """Move the average one step towards the source model's current weights."""
        decay = self.current_decay()
        for mine, theirs in zip(self.model.parameters(), self.source.parameters()):
            mine.lerp_(theirs.detach(), 1.0 - decay)  # θ_ema += (1 − d)(θ − θ_ema)
        for mine, theirs in zip(self.model.buffers(), self.source.buffers()):
            mine.copy_(theirs)
        self.num_updates += 1

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "decay": self.decay,
                "num_updates": self.num_updates}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.decay, self.num_updates = float(state["decay"]), int(state["num_updates"])
