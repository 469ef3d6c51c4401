"""The run engine every task shares: config base, device and precision, the checkpoint envelope,
torch.distributed helpers, and `Run` (in cnnkit.engine.run), which owns the life of a run."""
from cnnkit.engine.checkpoint import (TASKS, checkpoint_path, load_checkpoint, register_task,
                                      save_checkpoint)
from cnnkit.engine.config import ConfigBase, RunConfig, config_field
from cnnkit.engine.device import autocast, native_bf16, resolve_device, resolve_precision

__all__ = ["TASKS", "checkpoint_path", "load_checkpoint", "register_task", "save_checkpoint",
           "ConfigBase", "RunConfig", "config_field", "autocast", "native_bf16",
           "resolve_device", "resolve_precision"]
