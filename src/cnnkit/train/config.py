"""The training configuration: one dataclass, from which the CLI flags are generated (STYLE.md habit 5).

Precedence: these defaults < a YAML file (`--config`) < command-line flags.
"""
from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

import torch

from cnnkit.utils import CnnkitError, suggest


def config_field(default, help: str, choices: tuple | None = None):  # noqa: A002
    """A dataclass field with a default and the help text its generated CLI flag shows."""
    factory = {"default_factory": default} if callable(default) else {"default": default}
    return field(**factory, metadata={"help": help, "choices": choices})


# The default recipe per data set: values for the fields left at None. The digits and mnist recipes
# are measured (docs/benchmarks.md); the others are reasonable starting points, not yet tuned.
RECIPES: dict[str, dict[str, Any]] = {
    "digits": dict(epochs=30, batch_size=32, translate=2),  # 1,438 images: small batches, shifts
    "mnist": dict(epochs=2, batch_size=128, translate=0),  # ≥ 99.2% test in ~7 s on 2 cores
    "mnist-seq": dict(epochs=3, batch_size=64, translate=0),  # the attention sequence reader
    "fashion-mnist": dict(epochs=15, batch_size=128, translate=0),
    "kmnist": dict(epochs=10, batch_size=128, translate=1),
    "cifar10": dict(epochs=30, batch_size=128, translate=0),
}
DEFAULT_RECIPE: dict[str, Any] = dict(epochs=10, batch_size=128, translate=0)


class ConfigBase:
    """What every cnnkit config dataclass shares (training, DDPM, DCGAN): a plain-dict round
    trip for config.yaml and checkpoints, and the choices of `config_field` enforced."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]):
        known = {f.name for f in fields(cls)}
        for key in values:
            if key not in known:
                raise suggest(key, known, "config key")
        return cls(**values)

    def check_choices(self) -> None:
        """Raise a CnnkitError with the closest choice for a field outside its choices."""
        for f in fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value not in choices:
                raise suggest(value, choices, f.name.replace("_", "-"))


@dataclass
class TrainConfig(ConfigBase):
    # --- what to train on ---
    model: str = config_field("lenet", "registered model name (see `cnnkit models`)")
    backend: str = config_field("torch", "conv/pool layers: torch's, or cnnkit's from-scratch ops (lenet)",
                      ("torch", "scratch"))
    model_args: dict = config_field(dict, "extra model keywords, e.g. small_input=true,drop_rate=0.2")
    dataset: str = config_field("digits", "data set name (see `cnnkit datasets`)")
    data_dir: str = config_field("~/.cache/cnnkit", "download cache; for imagefolder, the image folder itself")
    mirror: str | None = config_field(None, "base URL replacing the official download location (or $CNNKIT_MIRROR)")
    image_size: int | None = config_field(None, "resize images to this side (default: native size; imagefolder: the model's)")
    stream: bool = config_field(False, "image folders: decode per batch in worker processes, not once into RAM")
    workers: int = config_field(2, "decoding processes with --stream")
    train_limit: int | None = config_field(None, "use only the first N training images (quick runs)")
    val_fraction: float = config_field(0.1, "fraction of the training set held out for validation (seeded)")
    # --- optimisation ---
    epochs: int | None = config_field(None, "epochs (default: the data set's recipe)")
    batch_size: int | None = config_field(None, "images per step and process: the global batch is world_size × this (default: recipe)")
    optimizer: str = config_field("adam", "optimizer", ("sgd", "adam", "adamw"))
    lr: float = config_field(3e-3, "peak learning rate")
    momentum: float = config_field(0.9, "SGD momentum (Adam: beta1)")
    nesterov: bool = config_field(False, "Nesterov momentum (SGD)")
    weight_decay: float = config_field(0.0, "L2 penalty (SGD, Adam) or decoupled decay (AdamW)")
    schedule: str = config_field("onecycle", "learning-rate schedule", ("constant", "step", "cosine", "onecycle"))
    warmup_epochs: float = config_field(0.0, "linear warm-up length for the cosine schedule")
    step_size: int = config_field(10, "step schedule: epochs between decays")
    gamma: float = config_field(0.1, "step schedule: decay factor")
    label_smoothing: float = config_field(0.0, "label smoothing of the cross-entropy loss")
    grad_clip: float = config_field(0.0, "clip the gradient norm to this value (0: off)")
    accumulate: int = config_field(1, "batches per optimiser step (gradient accumulation): the step's batch is N × batch size")
    max_epochs: int | None = config_field(None, "stop after this many epochs in all, with a checkpoint; the schedule keeps --epochs; --resume continues")
    max_time: float | None = config_field(None, "stop after this many minutes of training (at a step boundary, with a checkpoint); --resume continues")
    early_stop: int = config_field(0, "stop after this many epochs without improvement of `monitor` (0: off)")
    monitor: str = config_field("val_acc", "metric for best.pt and early stopping", ("val_acc", "val_loss"))
    # --- augmentation (whole-batch tensor ops) ---
    crop_padding: int = config_field(0, "random crop after zero-padding by this many pixels")
    translate: int | None = config_field(None, "random translation by up to this many pixels (default: recipe)")
    hflip: bool = config_field(True, "random horizontal flip where the data set allows it")
    # --- speed and reproducibility ---
    precision: str = config_field("auto", "bf16 autocast, fp32, or auto: bf16 where the CPU computes it natively",
                        ("auto", "fp32", "bf16"))
    channels_last: bool = config_field(True, "NHWC memory format (faster oneDNN convolutions on CPU)")
    threads: int = config_field(0, "torch threads (0: torch's default)")
    seed: int = config_field(0, "seed for initialisation, split, shuffling and augmentation")
    deterministic: bool = config_field(False, "deterministic algorithms only: bit-identical reruns")
    sync_bn: bool = config_field(False, "distributed runs: BatchNorm statistics over the global batch (SyncBatchNorm)")
    # --- output ---
    out_dir: str = config_field("runs", "where run folders are created")
    name: str | None = config_field(None, "run folder name (default: <model>-<dataset>-<time>)")
    resume: str | None = config_field(None, "continue the run in this folder (or from this checkpoint)")
    quiet: bool = config_field(False, "no progress bars")

    def recipe(self) -> dict[str, Any]:
        """The fields this config leaves at None, with the data set's recipe values."""
        values = RECIPES.get(self.dataset, DEFAULT_RECIPE)
        return {k: v for k, v in values.items() if getattr(self, k) is None}

    def validate(self) -> "TrainConfig":
        """Check the values argparse cannot check; raise CnnkitError naming the field."""
        self.check_choices()
        positive = {"batch_size": self.batch_size, "lr": self.lr, "epochs": self.epochs}
        for key, value in positive.items():
            if value is not None and value <= 0:
                raise CnnkitError(f"--{key.replace('_', '-')} must be positive, got {value}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise CnnkitError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise CnnkitError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.train_limit is not None and self.train_limit < 2:
            raise CnnkitError(f"--train-limit must be at least 2 images, got {self.train_limit}")
        if self.accumulate < 1:
            raise CnnkitError(f"--accumulate must be at least 1, got {self.accumulate}")
        if self.max_epochs is not None and self.max_epochs < 1:
            raise CnnkitError(f"--max-epochs must be at least 1, got {self.max_epochs}")
        if self.max_time is not None and not self.max_time > 0:
            raise CnnkitError(f"--max-time must be a positive number of minutes, got "
                              f"{self.max_time}")
        if self.early_stop and self.val_fraction == 0:
            raise CnnkitError("--early-stop needs a validation split (--val-fraction > 0)")
        return self

    def resolved_precision(self) -> str:
        if self.precision != "auto":
            return self.precision
        return "bf16" if native_bf16() else "fp32"

    def resolve(self) -> "TrainConfig":
        """Replace the 'depends on the machine or data set' defaults by their values."""
        self.validate()
        for key, value in self.recipe().items():
            setattr(self, key, value)
        self.precision = self.resolved_precision()
        return self



def native_bf16() -> bool:
    """True on CPUs with AMX or AVX512-BF16, where bf16 autocast is faster than fp32."""
    try:
        return torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()
    except AttributeError:  # private helpers: absent on other builds means "don't know"
        return False


def default_of(f) -> Any:
    return f.default_factory() if f.default is MISSING else f.default
