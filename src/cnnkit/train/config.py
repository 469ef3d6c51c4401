"""The training configuration: one dataclass, from which the CLI flags are generated (STYLE.md habit 5).

Precedence: these defaults < a YAML file (`--config`) < command-line flags.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from cnnkit.data import get_dataset_info
from cnnkit.engine.config import RunConfig, config_field
from cnnkit.utils import CnnkitError


@dataclass
class TrainConfig(RunConfig):
    """`cnnkit train`: a classifier (or the attention sequence reader) on a data set."""
    fixed_on_resume: ClassVar[tuple[str, ...]] = (
        "model", "backend", "model_args", "dataset", "data_dir", "image_size", "train_limit",
        "val_fraction", "batch_size", "accumulate", "seed", "stream", "weights", "freeze")

    # --- what to train on ---
    model: str = config_field("lenet", "registered model name (see `cnnkit models`)")
    backend: str = config_field("torch", "conv/pool layers: torch's, or cnnkit's from-scratch ops (lenet)",
                      ("torch", "scratch"))
    model_args: dict = config_field(dict, "extra model keywords, e.g. small_input=true,drop_rate=0.2")
    weights: str | None = config_field(None, "fine-tune: start from a torchvision/timm .pth state_dict, a cnnkit checkpoint or run folder (strict; a head of another class count is re-initialised; the image size is the checkpoint's)")
    freeze: str = config_field("none", "fine-tune: freeze nothing (none), all but the classifier head (backbone), or the first N stages (N)")
    backbone_lr_scale: float = config_field(1.0, "fine-tune: the backbone's learning rate is --lr × this (the head's is --lr)")
    dataset: str = config_field("digits", "data set name (see `cnnkit datasets`)")
    data_dir: str = config_field("~/.cache/cnnkit", "download cache; for imagefolder, the image folder itself")
    mirror: str | None = config_field(None, "base URL replacing the official download location (or $CNNKIT_MIRROR)")
    image_size: int | None = config_field(None, "resize images to this side (default: native size; imagefolder: the model's)")
    stream: bool = config_field(False, "image folders: decode per batch in worker processes, not once into RAM")
    workers: int = config_field(2, "decoding processes with --stream")
    strict: bool = config_field(False, "image folders: stop at the first unreadable image instead of skipping it (skipped files are listed in one warning line)")
    train_limit: int | None = config_field(None, "use only the first N training images (quick runs)")
    test_limit: int | None = config_field(None, "test only the first N test images (quick runs)")
    val_fraction: float = config_field(0.1, "fraction of the training set held out for validation (seeded)")
    # --- optimisation ---
    epochs: int | None = config_field(None, "epochs (default: the data set's recipe)")
    batch_size: int | None = config_field(None, "images per step and process: the global batch is world_size × this (default: recipe)")
    optimizer: str = config_field("adam", "optimizer", ("sgd", "adam", "adamw"))
    lr: float | None = config_field(None, "peak learning rate (default: the data set's recipe, else 3e-3)")
    momentum: float = config_field(0.9, "SGD momentum (Adam: beta1)")
    nesterov: bool = config_field(False, "Nesterov momentum (SGD)")
    weight_decay: float = config_field(0.0, "L2 penalty (SGD, Adam) or decoupled decay (AdamW)")
    schedule: str = config_field("onecycle", "learning-rate schedule", ("constant", "step", "cosine", "onecycle"))
    warmup_epochs: float = config_field(0.0, "linear warm-up length for the cosine schedule")
    step_size: int = config_field(10, "step schedule: epochs between decays")
    gamma: float = config_field(0.1, "step schedule: decay factor")
    label_smoothing: float | None = config_field(None, "label smoothing of the cross-entropy loss (default: the data set's recipe, else 0)")
    grad_clip: float = config_field(0.0, "clip the gradient norm to this value (0: off)")
    accumulate: int = config_field(1, "batches per optimiser step (gradient accumulation): the step's batch is N × batch size")
    early_stop: int = config_field(0, "stop after this many epochs without improvement of `monitor` (0: off)")
    monitor: str = config_field("auto", "metric for best.pt and early stopping (auto: val_acc; val_miou for segmentation, val_map (COCO box AP) for detection)",
                                ("auto", "val_acc", "val_loss", "val_miou", "val_map"))
    # --- augmentation (whole-batch tensor ops) ---
    crop_padding: int = config_field(0, "random crop after zero-padding by this many pixels")
    translate: int | None = config_field(None, "random translation by up to this many pixels (default: recipe)")
    hflip: bool = config_field(True, "random horizontal flip where the data set allows it")
    # --- segmentation (data sets of masks) ---
    crop_size: int | None = config_field(None, "train on random crops of this side (output pixels; default: recipe, else the whole image)")
    elastic: bool | None = config_field(None, "random elastic deformation of images and masks (U-Net paper §3.1; default: recipe, else off)")
    vflip: bool | None = config_field(None, "random vertical flips too (microscopy; default: recipe, else off)")
    max_scale: float | None = config_field(None, "random scale in [1/s, s] before cropping (default: recipe, else 1: off)")
    seg_loss: str | None = config_field(None, "cross-entropy, soft Dice, or their sum (default: recipe, else ce)", ("ce", "dice", "ce+dice"))
    class_weights: str | None = config_field(None, "cross-entropy class weights: none, or balanced (median frequency; default: recipe, else none)", ("none", "balanced"))
    border_weight: bool | None = config_field(None, "two classes: the U-Net paper's weight map (w0 = 10, σ = 5 px) on borders between touching objects (default: recipe, else off)")
    # --- detection (data sets of boxes, masks, keypoints) ---
    skip_bad: bool = config_field(False, "detection data: skip bad annotations and unreadable images (each reported in one line) instead of stopping at the first")
    mosaic: bool | None = config_field(None, "detection: YOLO's 4-image mosaic with random scale/translate, and HSV jitter (default: on for YOLOv8 models)")
    close_mosaic: int | None = config_field(None, "detection: train the last N epochs without mosaic (default: a tenth of the epochs, as ultralytics' 10 of 100)")
    ema_decay: float | None = config_field(None, "detection: keep an EMA of the weights with this decay, evaluated and saved for inference (default: 0.9999 for YOLOv8 models, else off)")
    backbone_weights: str | None = config_field(None, "detectors and OpenPose: start the backbone from a cnnkit classification run or checkpoint of the same architecture (e.g. resnet18 trained on CIFAR-10 for maskrcnn_resnet18_fpn or openpose_resnet18)")
    # --- speed and reproducibility ---
    channels_last: bool = config_field(True, "NHWC memory format (faster oneDNN convolutions on CPU)")
    sync_bn: bool = config_field(False, "distributed runs: BatchNorm statistics over the global batch (SyncBatchNorm)")

    def recipe(self) -> dict[str, Any]:
        """The fields this config leaves at None, with the data set's recipe values."""
        values = get_dataset_info(self.dataset).recipe
        return {k: v for k, v in values.items() if getattr(self, k) is None}

    def validate(self) -> "TrainConfig":
        """Check the values argparse cannot check; raise CnnkitError naming the field."""
        super().validate()
        positive = {"batch_size": self.batch_size, "lr": self.lr, "epochs": self.epochs}
        for key, value in positive.items():
            if value is not None and value <= 0:
                raise CnnkitError(f"--{key.replace('_', '-')} must be positive, got {value}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise CnnkitError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if self.label_smoothing is not None and not 0.0 <= self.label_smoothing < 1.0:
            raise CnnkitError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.test_limit is not None and self.test_limit < 1:
            raise CnnkitError(f"--test-limit must be at least 1 image, got {self.test_limit}")
        if self.train_limit is not None and self.train_limit < 2:
            raise CnnkitError(f"--train-limit must be at least 2 images, got {self.train_limit}")
        if self.accumulate < 1:
            raise CnnkitError(f"--accumulate must be at least 1, got {self.accumulate}")
        if self.max_scale is not None and self.max_scale < 1:
            raise CnnkitError(f"--max-scale must be at least 1 (scales in [1/s, s]), got "
                              f"{self.max_scale}")
        if self.ema_decay is not None and not 0 <= self.ema_decay < 1:
            raise CnnkitError(f"--ema-decay must be in [0, 1), got {self.ema_decay}")
        if self.close_mosaic is not None and self.close_mosaic < 0:
            raise CnnkitError(f"--close-mosaic must be ≥ 0 epochs, got {self.close_mosaic}")
        if self.early_stop and self.val_fraction == 0:
            raise CnnkitError("--early-stop needs a validation split (--val-fraction > 0)")
        self._validate_finetune()
        return self

    def _validate_finetune(self) -> None:
        given = self.model_args.get("weights")
        if given is not None and self.weights is not None and str(given) != self.weights:
            raise CnnkitError(f"--weights {self.weights} and --model-args weights={given} "
                              f"differ; give one")
        if str(self.freeze) not in ("none", "backbone") and not (
                str(self.freeze).isdigit() and int(self.freeze) >= 1):
            raise CnnkitError(f"--freeze must be none, backbone or a number of stages ≥ 1, got "
                              f"'{self.freeze}'")
        if not self.backbone_lr_scale > 0:
            raise CnnkitError(f"--backbone-lr-scale must be positive, got "
                              f"{self.backbone_lr_scale}")
        if self.backbone_lr_scale != 1 and self.init_weights is None:
            raise CnnkitError("--backbone-lr-scale is for fine-tuning: give --weights too")
        tuned = [flag for flag, on in (("--weights", self.init_weights), ("--freeze", str(
            self.freeze) != "none"), ("--backbone-lr-scale", self.backbone_lr_scale != 1)) if on]
        if tuned and self.task != "classify":
            raise CnnkitError(f"{tuned[0]} is for classifiers; {self.dataset} is a {self.task} "
                              f"set (detectors: --backbone-weights)")

    @property
    def init_weights(self) -> str | None:
        """The checkpoint to start from: --weights, or the older --model-args weights=PATH."""
        given = self.model_args.get("weights")
        return self.weights or (str(given) if given is not None else None)

    def resolve(self) -> "TrainConfig":
        """Fill the fields left to the data set's recipe (device and precision: the engine)."""
        self.validate()
        for key, value in self.recipe().items():
            setattr(self, key, value)
        if self.image_size is None and self.init_weights and not self.resume:
            from cnnkit.models._weights import checkpoint_image_size  # noqa: PLC0415
            self.image_size = checkpoint_image_size(self.init_weights)  # None: not recorded
        for key, fallback in (("elastic", False), ("vflip", False), ("border_weight", False),
                              ("max_scale", 1.0),
                              ("lr", 3e-3), ("label_smoothing", 0.0), ("seg_loss", "ce"),
                              ("class_weights", "none")):
            if getattr(self, key) is None:  # no recipe value either
                setattr(self, key, fallback)
        if self.monitor == "auto":
            self.monitor = {"segment": "val_miou", "detect": "val_map"}.get(self.task, "val_acc")
        return self

    @property
    def task(self) -> str:
        """The task the data set calls for: "classify", "segment" or "detect"."""
        return getattr(get_dataset_info(self.dataset), "task", "classify")
