"""Batch normalisation over the global batch of a data-parallel run, on any device.

torch's `nn.SyncBatchNorm` only runs on GPU tensors; cnnkit trains on CPUs, so this layer
computes the same thing with two differentiable all-reduces (`_SumOverRanks`),
whose backward all-reduces the gradients: every rank's parameters then get the gradient of the
loss over the whole global batch, exactly as one process normalising the concatenated batch
would (Ioffe & Szegedy 2015, https://arxiv.org/abs/1502.03167, Alg. 1; "cross-GPU BN",
Peng et al. 2018, https://arxiv.org/abs/1711.07240).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class _SumOverRanks(torch.autograd.Function):
    """y = Σ_ranks x; the gradient of every rank's loss reaches every rank's x: ∂/∂x = Σ_ranks ∂/∂y."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        total = x.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone()
        dist.all_reduce(total)
        return total


def all_reduce(x: torch.Tensor) -> torch.Tensor:
    return _SumOverRanks.apply(x)


class GlobalBatchNorm(_BatchNorm):
    """BatchNorm1d/2d/3d whose training statistics cover every rank's batch.

    Outside a process group (or in eval mode) it is plain `F.batch_norm`. The variance is the
    two-pass Σ(x − mean)² / n, not E[x²] − mean² (which cancels badly in float32).
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input (N, C, ...), got {x.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if not (self.training and distributed):
            return super().forward(x)
        self._check_input_dim(x)
        dims = [0, *range(2, x.dim())]  # all but the channel axis
        shape = (1, -1) + (1,) * (x.dim() - 2)  # (1, C, 1, ...) for broadcasting
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x  # stats in ≥ fp32
        local_count = torch.tensor([xf.numel() / xf.shape[1]], dtype=xf.dtype)
        totals = all_reduce(torch.cat([xf.sum(dims), local_count]))  # (C + 1,) over ranks
        count = totals[-1]
        mean = totals[:-1] / count  # (C,)
        var = all_reduce((xf - mean.view(shape)).square().sum(dims)) / count  # biased, (C,)
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), count.item())
        y = (xf - mean.view(shape)) * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, count: float) -> None:
        """As `nn.BatchNorm`: momentum average (or cumulative with momentum None) of the mean
        and of the unbiased variance n / (n − 1) · var."""
        self.num_batches_tracked += 1
        momentum = (1.0 / self.num_batches_tracked.item() if self.momentum is None
                    else self.momentum)
        unbiased = var * (count / max(count - 1.0, 1.0))
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
        self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)


def convert_to_global_batchnorm(module: nn.Module) -> nn.Module:
    """Every BatchNorm in `module` → GlobalBatchNorm with the same parameters and buffers."""
    if isinstance(module, _BatchNorm) and not isinstance(module, (GlobalBatchNorm,
                                                                  nn.SyncBatchNorm)):
        converted = GlobalBatchNorm(module.num_features, module.eps, module.momentum,
                                    module.affine, module.track_running_stats)
        converted.load_state_dict(module.state_dict())
        converted.train(module.training)
        return converted
    for name, child in module.named_children():
        module.add_module(name, convert_to_global_batchnorm(child))
    return module
