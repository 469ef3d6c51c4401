"""Data-parallel training on `torch.distributed`, launched by `torchrun`.

`torchrun --nproc-per-node N -m cnnkit train ...` starts N copies of the trainer with RANK,
WORLD_SIZE, MASTER_ADDR and MASTER_PORT in their environment; `setup()` joins them into one
process group. Each rank trains DistributedDataParallel on a disjoint strided shard of the same
(seed, epoch) permutation, so the global batch is world_size × batch_size and every sample is
seen once per epoch (Goyal et al. 2017, https://arxiv.org/abs/1706.02677: with a mean loss, the
averaged gradient of N shards of B equals the gradient of one batch of N·B).
Without WORLD_SIZE in the environment nothing here creates a process group: every helper then
acts as the identity, and a plain run is unchanged.
"""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from cnnkit.layers.sync_batchnorm import convert_to_global_batchnorm
from cnnkit.utils import CnnkitError


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands: its rank among world_size, and whether it made the group."""
    rank: int = 0
    world_size: int = 1
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def setup(timeout_s: float = 300.0) -> DistEnv:
    """Join the process group described by torchrun's environment; a no-op when it is absent.

    The backend string routes CPU tensors through gloo and CUDA tensors through NCCL, so the same
    run works on a CPU box and on GPUs. The timeout bounds how long a collective waits for a rank
    that died (torchrun's agent usually ends the job first, when it sees the worker exit).
    """
    if dist.is_available() and dist.is_initialized():  # a caller made the group: use it
        return DistEnv(dist.get_rank(), dist.get_world_size(), owns_group=False)
    if "WORLD_SIZE" not in os.environ:
        return DistEnv()
    if not dist.is_available():
        raise CnnkitError("WORLD_SIZE is set but this torch build has no torch.distributed")
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    return DistEnv(dist.get_rank(), dist.get_world_size(), owns_group=True)


def teardown(env: DistEnv) -> None:
    if env.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Sum `values` over ranks (in place, and returned); the identity for one process."""
    if env.active:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def barrier(env: DistEnv) -> None:
    if env.active:
        dist.barrier()


def on_main(env: DistEnv, fn, *args, **kwargs):
    """Run `fn` on rank 0 only and give every rank its result.

    A CnnkitError on rank 0 (say, an existing run folder) is re-raised on every rank, so the
    others fail with the same one-line message instead of waiting for rank 0 forever.
    """
    if not env.active:
        return fn(*args, **kwargs)
    box = [None]
    if env.is_main:
        try:
            box[0] = ("ok", fn(*args, **kwargs))
        except CnnkitError as exc:
            box[0] = ("error", str(exc))
    dist.broadcast_object_list(box, src=0)
    status, value = box[0]
    if status == "error":
        raise CnnkitError(value)
    return value


def average_gradients(parameters, env: DistEnv) -> None:
    """Each gradient ← its mean over the ranks, in one all-reduce: what DDP does during backward,
    for networks it cannot wrap (called several times before one backward, or frozen in turn)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not env.active or not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= env.world_size
    for g, mean in zip(grads, flat.split([g.numel() for g in grads])):
        g.copy_(mean.view_as(g))


def all_gather_objects(obj, env: DistEnv) -> list:
    """[rank 0's obj, rank 1's obj, ...]; [obj] for one process."""
    if not env.active:
        return [obj]
    out = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def shard(ds, env: DistEnv):
    """This rank's strided share of an evaluation set, with no padding: the shards partition
    the set, so summed counts equal the set's size (DistributedSampler would repeat samples)."""
    if not env.active:
        return ds
    return ds.subset(torch.arange(env.rank, len(ds), env.world_size))


def gather_shards(local: torch.Tensor, total: int, env: DistEnv) -> torch.Tensor:
    """Undo `shard`: interleave every rank's rows back into the set's order, (total, ...)."""
    if not env.active:
        return local
    parts = all_gather_objects(local, env)
    full = local.new_empty((total, *local.shape[1:]))
    for rank, part in enumerate(parts):
        full[rank::env.world_size] = part
    return full


def sync_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """BatchNorm → batch statistics over the global batch, not each rank's.

    On GPUs torch's fused `SyncBatchNorm`; on the CPU (where torch's does not run) cnnkit's
    `GlobalBatchNorm`, which computes the same with differentiable all-reduces over gloo.
    """
    if next(model.parameters()).device.type == "cpu":
        return convert_to_global_batchnorm(model)
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)


def launch(nproc: int, train_args: list[str], command: tuple[str, ...] = ("train",)) -> int:
    """`cnnkit train --nproc N` (or another training `command`, e.g. ("cyclegan", "train")):
    run torchrun on this machine; return its exit code."""
    if nproc < 1:
        raise CnnkitError(f"--nproc must be at least 1, got {nproc}")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={nproc}", "-m", "cnnkit", *command, *train_args]
    return subprocess.run(command, check=False).returncode
