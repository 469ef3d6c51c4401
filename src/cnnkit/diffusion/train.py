"""`train_diffusion(config)`: a DDPM training run in one function that reads top to bottom.

Data scaled to [-1, 1] → U-Net denoiser inside a GaussianDiffusion → Adam at a constant learning
rate after a linear warm-up (Ho et al. 2020: 2e-4, gradient clipping at 1) → EMA of the weights →
per epoch: metrics.csv, a DDIM sample grid from the EMA weights, last.pt. A run stopped at any
step (kill, --max-minutes) resumes exactly: the data order depends only on (seed, epoch), the
position in the epoch is the saved step, and the RNG state is saved with the weights.
"""
from __future__ import annotations

import csv
import io
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import yaml
from torch import nn

from cnnkit.data import InMemoryLoader, load_dataset
from cnnkit.diffusion.ema import EMA
from cnnkit.diffusion.process import GaussianDiffusion
from cnnkit.diffusion.samplers import ddim_sample
from cnnkit.diffusion.schedules import SCHEDULES, beta_schedule
from cnnkit.models import create_model
from cnnkit.train.checkpoint import load_checkpoint, new_run_dir, save_checkpoint
from cnnkit.train.config import ConfigBase, config_field, native_bf16
from cnnkit.train.metrics import autocast
from cnnkit.train.trainer import TrainingDiverged, progress_bar
from cnnkit.utils import CnnkitError, atomic_write_text

METRIC_COLUMNS = ["epoch", "step", "loss", "lr", "epoch_s", "img_per_s"]
RESUME_OVERRIDES = ("epochs", "max_minutes", "quiet")  # what a resumed run may change


@dataclass
class DiffusionConfig(ConfigBase):
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
    max_minutes: float = config_field(0.0, "stop (resumably) after this much training time (0: no limit)")
    # --- sample grids written each epoch ---
    sample_n: int = config_field(64, "images in each epoch's sample grid")
    sample_steps: int = config_field(50, "DDIM steps for the sample grids")
    guidance: float = config_field(1.0, "class-conditional: guidance scale of the sample grids")
    # --- speed and reproducibility ---
    precision: str = config_field("auto", "bf16 autocast (1.6x faster where the CPU has "
                                  "AMX/AVX512-BF16), fp32, or auto: bf16 where native",
                                  ("auto", "fp32", "bf16"))
    threads: int = config_field(0, "torch threads (0: torch's default)")
    seed: int = config_field(0, "seed for initialisation, shuffling, noise and sample grids")
    # --- output ---
    out_dir: str = config_field("runs", "where run folders are created")
    name: str | None = config_field(None, "run folder name (default: ddpm-<dataset>-<time>)")
    resume: str | None = config_field(None, "continue the run in this folder (or from this checkpoint)")
    quiet: bool = config_field(False, "no progress bars")

    def validate(self) -> "DiffusionConfig":
        self.check_choices()
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


def build_process(ckpt_or_config: dict, model: nn.Module | None) -> GaussianDiffusion:
    """The GaussianDiffusion a run used, from its config dict (as saved in the checkpoint)."""
    config = ckpt_or_config
    betas = beta_schedule(config["schedule"], config["timesteps"])
    num_classes = config["num_classes"] if config["class_conditional"] else 0
    return GaussianDiffusion(model, betas, num_classes=num_classes, p_uncond=config["p_uncond"])


def lr_at(step: int, lr: float, warmup_steps: int) -> float:
    """Linear warm-up to `lr`, then constant (Ho et al. 2020, appendix B)."""
    return lr * min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else lr


def sample_grid(process: GaussianDiffusion, model: nn.Module, config: DiffusionConfig,
                image_shape: tuple[int, ...], path: Path, title: str) -> None:
    """A DDIM grid from fixed noise (the same every epoch); conditional: class k in column k."""
    from cnnkit.viz import image_grid  # noqa: PLC0415  (matplotlib only when drawing)
    generator = torch.Generator().manual_seed(config.seed)
    labels, nrow = None, 8
    if process.num_classes:
        nrow = process.num_classes
        labels = torch.arange(config.sample_n) % process.num_classes
    guidance = config.guidance if process.num_classes else 1.0
    images = ddim_sample(process, model, (config.sample_n, *image_shape), labels=labels,
                         guidance=guidance, generator=generator, steps=config.sample_steps)
    image_grid(images, path, nrow=nrow, value_range=(-1.0, 1.0), title=title)


# --- the run ---

def train_diffusion(config: DiffusionConfig, *, overrides: dict | None = None, log=print) -> Path:
    """Train a DDPM on `config.dataset`; write the run folder and return its path.

    With `config.resume`, the run's saved config is used, updated by `overrides` (only
    epochs, max_minutes and quiet may change, e.g. to extend a finished run).
    """
    ckpt = None
    if config.resume:
        ckpt = load_checkpoint(config.resume)
        if "ema" not in ckpt:
            raise CnnkitError(f"{config.resume} is not a diffusion checkpoint (no EMA weights)")
        resume = Path(config.resume)
        run_dir = resume if resume.is_dir() else resume.parent
        saved = {k: v for k, v in ckpt["config"].items() if k != "num_classes"}
        config = replace(DiffusionConfig.from_dict(saved), resume=None,
                         **{k: v for k, v in (overrides or {}).items() if k in RESUME_OVERRIDES})
    config.validate()
    if config.precision == "auto":  # recorded resolved, so a resumed run computes the same way
        config.precision = "bf16" if native_bf16() else "fp32"
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)

    train_set = load_dataset(config.dataset, "train", data_dir=Path(config.data_dir).expanduser(),
                             mirror=config.mirror, quiet=config.quiet)
    # mean = std = 0.5: the loader's (x/255 − mean)/std maps 0..255 onto [-1, 1], the range the
    # process assumes (x̂_0 is clipped to it; x_T ~ N(0, I) matches its scale).
    channels = train_set.image_shape[0]
    train_set = replace(train_set, mean=(0.5,) * channels, std=(0.5,) * channels)
    loader = InMemoryLoader(train_set, config.batch_size, shuffle=True, drop_last=True,
                            seed=config.seed)
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise CnnkitError(f"--batch-size {config.batch_size} is larger than the training set "
                          f"({len(train_set)} images)")
    num_classes = len(train_set.classes)
    model_kwargs = dict(config.model_kwargs(), in_chans=channels,
                        img_size=train_set.image_shape[-1],
                        num_classes=num_classes if config.class_conditional else 0)
    model = create_model("ddpm_unet", **model_kwargs)
    process = build_process({**config.to_dict(), "num_classes": num_classes}, model)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    ema = EMA(model, decay=config.ema_decay)

    history: list[dict] = []
    step, partial = 0, {"loss_sum": 0.0, "seen": 0}  # partial: the epoch a stop interrupted
    if ckpt is not None:  # exact resume: weights, average, moments, RNG, position in the epoch
        model.load_state_dict(ckpt["model"])
        ema.load_state_dict(ckpt["ema"])
        optimizer.load_state_dict(ckpt["optimizer"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        step, history, partial = ckpt["step"], list(ckpt["history"]), dict(ckpt["partial"])
        if step >= config.epochs * steps_per_epoch:
            log(f"{run_dir} has finished its {config.epochs} epochs; extend it with --epochs")
        else:
            log(f"resuming {run_dir} at step {step} (epoch {step // steps_per_epoch + 1}/"
                f"{config.epochs})")
    else:
        run_dir = new_run_dir(config.out_dir, config.name, f"ddpm-{config.dataset}")
        log(f"ddpm_unet: {sum(p.numel() for p in model.parameters()):,} parameters | "
            f"{config.dataset}: {len(train_set)} images | {config.epochs} epochs × "
            f"{steps_per_epoch} steps | T = {config.timesteps} ({config.schedule}) | run {run_dir}")
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))

    def checkpoint(loss_sum: float = 0.0, seen: int = 0) -> None:  # sums of an unfinished epoch
        save_checkpoint(run_dir / "last.pt", {
            "model": model.state_dict(), "ema": ema.state_dict(),
            "optimizer": optimizer.state_dict(), "rng": {"torch": torch.get_rng_state()},
            "epoch": step // steps_per_epoch, "step": step, "history": history,
            "partial": {"loss_sum": loss_sum, "seen": seen},
            "config": {**config.to_dict(), "num_classes": num_classes},
            "model_name": "ddpm_unet", "model_kwargs": model_kwargs,
            "classes": train_set.classes, "image_size": list(train_set.image_shape)})

    start, stopped = time.perf_counter(), False
    for epoch in range(step // steps_per_epoch, config.epochs):
        model.train()
        loader.set_epoch(epoch)
        skip = step - epoch * steps_per_epoch  # batches of this epoch done before a resume
        loss_sum, seen, t0 = partial["loss_sum"], partial["seen"], time.perf_counter()
        partial = {"loss_sum": 0.0, "seen": 0}
        bar = progress_bar(steps_per_epoch, f"epoch {epoch + 1}/{config.epochs}", config.quiet)
        bar.update(skip)
        for batch, (x, y) in enumerate(loader):
            if batch < skip:
                continue
            lr = lr_at(step, config.lr, config.warmup_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with autocast(config.precision):
                loss = process(x, y if config.class_conditional else None)
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                bar.close()
                raise TrainingDiverged(f"loss became {loss_value} at step {step + 1}; the last "
                                       f"good checkpoint is kept; try a lower --lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            ema.update()
            step += 1
            loss_sum += loss_value * len(x)
            seen += len(x)
            bar.update(1)
            if step % 10 == 0:
                bar.set_postfix(loss=f"{loss_value:.4f}")
            if config.max_minutes and time.perf_counter() - start > 60 * config.max_minutes:
                stopped = True
                break
        bar.close()
        epoch_s = time.perf_counter() - t0
        if stopped and step % steps_per_epoch:  # mid-epoch: save the position, no epoch row
            checkpoint(loss_sum, seen)
            log(f"stopped after {config.max_minutes:g} minutes at step {step}; continue with "
                f"--resume {run_dir}")
            break
        row = {"epoch": epoch + 1, "step": step, "loss": loss_sum / max(seen, 1), "lr": lr,
               "epoch_s": epoch_s, "img_per_s": (seen - skip * config.batch_size) / epoch_s}
        history.append(row)
        _write_metrics(run_dir, history)
        sample_grid(process, ema.model, config, train_set.image_shape,
                    run_dir / f"samples_epoch{epoch + 1:03d}.png",
                    title=f"epoch {epoch + 1}, EMA weights, DDIM {config.sample_steps} steps")
        checkpoint()
        log(f"epoch {epoch + 1:3d}  loss {row['loss']:.4f}  {epoch_s:6.1f} s  "
            f"{row['img_per_s']:5.0f} img/s")
        if stopped:
            break
    return run_dir




def _write_metrics(run_dir: Path, history: list[dict]) -> None:
    out = io.StringIO()
    table = csv.DictWriter(out, fieldnames=METRIC_COLUMNS)
    table.writeheader()
    table.writerows(history)
    atomic_write_text(run_dir / "metrics.csv", out.getvalue())
