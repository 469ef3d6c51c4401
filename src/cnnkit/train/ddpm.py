"""`train_diffusion(config)`: the DDPM task, top to bottom.

Data scaled to [-1, 1] → U-Net denoiser inside a GaussianDiffusion → Adam at a constant learning
rate after a linear warm-up (Ho et al. 2020: 2e-4, gradient clipping at 1) → EMA of the weights →
per epoch: the held-out denoising loss of the EMA weights (picks best.pt), a DDIM sample grid,
and the engine's table, metrics.csv and last.pt. Resuming, limits, signals, devices and DDP are
cnnkit.engine.run.Run's.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from cnnkit.data import InMemoryLoader, load_dataset
from cnnkit.diffusion.ema import EMA
from cnnkit.diffusion.process import GaussianDiffusion, build_process
from cnnkit.diffusion.samplers import ddim_sample
from cnnkit.diffusion.schedules import SCHEDULES
from cnnkit.engine.config import RunConfig, config_field
from cnnkit.engine.run import Run
from cnnkit.models import create_model
from cnnkit.utils import CnnkitError

VAL_SEED = 1234  # the held-out loss's t and noise: the same draws every epoch


@dataclass
class DiffusionConfig(RunConfig):
    """`cnnkit diffusion train`: a DDPM (Ho et al. 2020) with a U-Net denoiser."""
    fixed_on_resume: ClassVar[tuple[str, ...]] = (
        "dataset", "data_dir", "class_conditional", "base_channels", "channel_mults",
        "num_res_blocks", "attention_resolutions", "dropout", "schedule", "timesteps",
        "batch_size", "seed")

    # --- data ---
    dataset: str = config_field("mnist", "data set name (see `cnnkit datasets`)")
    data_dir: str = config_field("~/.cache/cnnkit", "download cache")
    mirror: str | None = config_field(None, "base URL replacing the official download location")
    class_conditional: bool = config_field(False, "condition on the class, with classifier-free guidance")
    # --- denoiser (ddpm_unet) ---
    base_channels: int = config_field(32, "U-Net width at full resolution")
    channel_mults: str = config_field("1,2,2", "width multipliers per resolution level, comma-separated")
    num_res_blocks: int = config_field(1, "residual blocks per level")
    attention_resolutions: str = config_field("7", "image sides with self-attention, comma-separated")
    dropout: float = config_field(0.0, "dropout inside the residual blocks (Ho et al. used 0.1 "
                                  "on CIFAR-10; a short MNIST run underfits, so none)")
    # --- diffusion process ---
    schedule: str = config_field("linear", "noise schedule", tuple(SCHEDULES))
    timesteps: int = config_field(1000, "diffusion steps T")
    p_uncond: float = config_field(0.1, "class-conditional: probability of training on the null class")
    # --- optimisation ---
    epochs: int = config_field(10, "epochs")
    batch_size: int = config_field(128, "images per optimisation step")
    lr: float = config_field(1e-3, "Adam learning rate (Ho et al. 2020 used 2e-4 for 35.7 M "
                             "parameters; a 1 M-parameter U-Net trains faster at 1e-3)")
    warmup_steps: int = config_field(200, "linear learning-rate warm-up steps")
    grad_clip: float = config_field(1.0, "clip the gradient norm to this value (0: off)")
    ema_decay: float = config_field(0.999, "decay of the weight average used for sampling")
    # --- sample grids written each epoch ---
    sample_n: int = config_field(64, "images in each epoch's sample grid")
    sample_steps: int = config_field(50, "DDIM steps for the sample grids")
    guidance: float = config_field(1.0, "class-conditional: guidance scale of the sample grids")
    val_images: int = config_field(1000, "test images whose denoising loss (EMA weights, fixed t and "
                                   "noise) picks best.pt each epoch (0: no best.pt)")

    def validate(self) -> "DiffusionConfig":
        super().validate()
        for key in ("epochs", "batch_size", "lr", "timesteps", "sample_n", "sample_steps"):
            if getattr(self, key) <= 0:
                raise CnnkitError(f"--{key.replace('_', '-')} must be positive, got "
                                  f"{getattr(self, key)}")
        if self.sample_steps > self.timesteps:
            raise CnnkitError(f"--sample-steps {self.sample_steps} exceeds --timesteps "
                              f"{self.timesteps}")
        self.model_kwargs()  # the lists parse
        return self

    def model_kwargs(self) -> dict:
        """The U-Net's keywords from the denoiser fields (num_classes etc. are added by the run)."""
        return dict(base_channels=self.base_channels, num_res_blocks=self.num_res_blocks,
                    channel_mults=_int_list(self.channel_mults, "channel-mults"),
                    attention_resolutions=_int_list(self.attention_resolutions,
                                                    "attention-resolutions"),
                    dropout=self.dropout)


def _int_list(text: str, flag: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in str(text).replace(" ", "").split(",") if v)
    except ValueError:
        raise CnnkitError(f"--{flag} must be comma-separated integers, got '{text}'") from None


def lr_at(step: int, lr: float, warmup_steps: int) -> float:
    """Linear warm-up to `lr`, then constant (Ho et al. 2020, appendix B)."""
    return lr * min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else lr


def sample_grid(process: GaussianDiffusion, model: nn.Module, config: DiffusionConfig,
                image_shape: tuple[int, ...], path: Path, title: str,
                classes: list[str] | None = None) -> None:
    """A DDIM grid from fixed noise (the same every epoch); conditional: class k in column k,
    named above it."""
    from cnnkit.viz import image_grid  # noqa: PLC0415  (matplotlib only when drawing)
    generator = torch.Generator().manual_seed(config.seed)
    labels, nrow = None, 8
    if process.num_classes:
        nrow = process.num_classes
        labels = torch.arange(config.sample_n) % process.num_classes
    guidance = config.guidance if process.num_classes else 1.0
    images = ddim_sample(process, model, (config.sample_n, *image_shape), labels=labels,
                         guidance=guidance, generator=generator, steps=config.sample_steps)
    names = ([str(c) for c in classes] if process.num_classes and classes
             and config.sample_n >= len(classes) else None)
    image_grid(images.cpu(), path, nrow=nrow, value_range=(-1.0, 1.0), title=title,
               col_labels=names)


# --- the run ---

def train_diffusion(config: DiffusionConfig, *, log=print) -> Path:
    """Train a DDPM on `config.dataset`; write the run folder and return its path."""
    with Run.open(config, task="ddpm", prefix=f"ddpm-{config.dataset}", log=log) as run:
        _train(run, run.config, run.log)
        return run.dir


def _train(run: Run, config: DiffusionConfig, log) -> None:
    options = dict(data_dir=Path(config.data_dir).expanduser(), mirror=config.mirror,
                   quiet=config.quiet)
    train_set = load_dataset(config.dataset, "train", **options)
    # mean = std = 0.5: the loader's (x/255 − mean)/std maps 0..255 onto [-1, 1], the range the
    # process assumes (x̂_0 is clipped to it; x_T ~ N(0, I) matches its scale).
    channels = train_set.image_shape[0]
    train_set = replace(train_set, mean=(0.5,) * channels, std=(0.5,) * channels)
    loader = InMemoryLoader(train_set, config.batch_size, shuffle=True, drop_last=True,
                            seed=config.seed, rank=run.env.rank, world_size=run.env.world_size)
    num_classes = len(train_set.classes)
    conditional = config.class_conditional
    model_kwargs = dict(config.model_kwargs(), in_chans=channels,
                        img_size=train_set.image_shape[-1],
                        num_classes=num_classes if conditional else 0)
    model, net = run.prepare(create_model("ddpm_unet", **model_kwargs))
    process = build_process({**config.to_dict(), "num_classes": num_classes}, net).to(run.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    ema = EMA(model, decay=config.ema_decay)
    run.restore(models={"model": model}, optimizers={"model": optimizer}, ema={"model": ema},
                spec={"models": {"model": {"name": "ddpm_unet", "kwargs": model_kwargs}},
                      "infer": "model", "classes": train_set.classes, "mean": [0.5] * channels,
                      "std": [0.5] * channels, "image_shape": list(train_set.image_shape),
                      "num_classes": num_classes})
    val = held_out(config, options, run.device) if config.val_images else None
    if not run.resuming:
        log(f"ddpm_unet: {sum(p.numel() for p in model.parameters()):,} parameters | "
            f"{config.dataset}: {len(train_set)} images | {config.epochs} epochs × "
            f"{len(loader)} steps | T = {config.timesteps} ({config.schedule}) | "
            f"{run.device.type}, {run.precision} | run {run.dir}")

    for epoch, batches in run.epochs(loader, epochs=config.epochs):
        model.train()
        for x, y in batches:
            lr = lr_at(run.step_count, config.lr, config.warmup_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with run.autocast():
                loss = process(x, y if conditional else None)
            run.sums["loss"] += run.step(loss, optimizer, clip=config.grad_clip) * len(x)
            run.sums["seen"] += len(x)
            ema.update()
        if not batches.complete:  # stopped mid-epoch: last.pt holds the position
            break
        sums = run.reduce(run.sums)
        row = {"step": run.step_count, "loss": sums["loss"] / sums["seen"], "lr": lr}
        if val is not None:
            row["val_loss"] = validation_loss(process, ema.model, *val, run)
        if run.env.is_main:
            sample_grid(process, ema.model, config, train_set.image_shape,
                        run.dir / f"samples_epoch{epoch + 1:03d}.png",
                        title=f"epoch {epoch + 1}, EMA weights, DDIM {config.sample_steps} steps",
                        classes=list(train_set.classes))
        run.end_epoch(row, batches=batches, monitor=("val_loss", "min") if val else None)
    run.finish()


def held_out(config: DiffusionConfig, options: dict, device) -> tuple:
    """The first `val_images` test images in [-1, 1] with their labels, on `device`."""
    test = load_dataset(config.dataset, "test", **options)
    index = torch.arange(min(config.val_images, len(test)))
    x = test.images[index].float().div(127.5).sub(1.0)  # (n, C, H, W) in [-1, 1]
    return x.to(device), test.labels[index].to(device)


@torch.no_grad()
def validation_loss(process: GaussianDiffusion, model: nn.Module, x: torch.Tensor,
                    y: torch.Tensor, run: Run, batch_size: int = 250) -> float:
    """The ε-prediction loss of `model` on fixed images, timesteps and noise (drawn from their
    own seeded generator, so the training RNG is untouched): comparable between epochs."""
    generator = torch.Generator().manual_seed(VAL_SEED)
    t = torch.randint(0, process.num_timesteps, (len(x),), generator=generator)  # (n,)
    noise = torch.randn(x.shape, generator=generator)  # (n, C, H, W)
    total = 0.0
    for i in range(0, len(x), batch_size):
        xb, tb = x[i:i + batch_size], t[i:i + batch_size].to(x.device)
        nb = noise[i:i + batch_size].to(x.device)
        labels = y[i:i + batch_size] if process.num_classes else None
        with run.autocast():
            eps = model(process.q_sample(xb, tb, nb), tb, labels)
        total += F.mse_loss(eps.float(), nb, reduction="sum").item()
    return total / noise.numel()
