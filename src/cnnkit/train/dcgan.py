"""`train_gan(config)`: the DCGAN task, top to bottom.

Adversarial training as in Radford et al. 2016 (https://arxiv.org/abs/1511.06434): per batch, a
discriminator step on real and generated images, then a generator step with the non-saturating
loss (Goodfellow et al. 2014, §3), both with Adam lr 2e-4, β1 = 0.5, images scaled to [-1, 1] to
match G's Tanh. Per epoch: a sample grid of fixed noise, losses.png (per-step losses, smoothed)
and the engine's table, metrics.csv and last.pt. Resuming, limits, signals, devices and DDP are
cnnkit.engine.run.Run's; the per-step losses travel in the checkpoint's `extra`.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F

from cnnkit.data import InMemoryLoader, load_dataset
from cnnkit.engine.config import RunConfig, config_field
from cnnkit.engine.run import Run
from cnnkit.models import count_parameters, create_model
from cnnkit.utils import CnnkitError


@dataclass
class GanConfig(RunConfig):
    """`cnnkit gan train`: a DCGAN (Radford et al. 2016)."""
    fixed_on_resume: ClassVar[tuple[str, ...]] = (
        "dataset", "data_dir", "class_conditional", "nz", "ngf", "ndf", "embed_dim",
        "batch_size", "seed")

    # --- data ---
    dataset: str = config_field("mnist", "data set name (see `cnnkit datasets`)")
    data_dir: str = config_field("~/.cache/cnnkit", "download cache (data sets live in DATA_DIR/<name>/)")
    mirror: str | None = config_field(None, "base URL replacing the official download location")
    class_conditional: bool = config_field(False, "condition G and D on the class label")
    # --- the two networks (Radford et al. 2016) ---
    nz: int = config_field(100, "length of the noise vector z")
    ngf: int = config_field(64, "generator width: channels of its last hidden layer")
    ndf: int = config_field(64, "discriminator width: channels of its first layer")
    embed_dim: int = config_field(10, "class-conditional G: length of the label embedding joined to z")
    # --- optimisation ---
    epochs: int = config_field(5, "epochs")
    batch_size: int = config_field(128, "images per step")
    lr: float = config_field(2e-4, "Adam learning rate of both networks")
    beta1: float = config_field(0.5, "Adam β1 (0.5: DCGAN §4; 0.9 oscillates)")
    beta2: float = config_field(0.999, "Adam β2")
    grid_size: int = config_field(64, "images in each epoch's sample grid")

    def validate(self) -> "GanConfig":
        super().validate()
        positive = {"nz": self.nz, "ngf": self.ngf, "ndf": self.ndf, "embed_dim": self.embed_dim,
                    "batch_size": self.batch_size, "lr": self.lr, "grid_size": self.grid_size,
                    "epochs": self.epochs}
        for key, value in positive.items():
            if value <= 0:
                raise CnnkitError(f"--{key.replace('_', '-')} must be positive, got {value}")
        for key in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise CnnkitError(f"--{key} must be in [0, 1), got {getattr(self, key)}")
        return self


@dataclass
class GanResult:
    run_dir: Path
    history: list[dict]
    train_seconds: float


def build_networks(config: GanConfig, image_shape, num_classes: int):
    """(G, D, their constructor keywords) for images of `image_shape` (C, H, W)."""
    channels, height, width = image_shape
    if height != width:
        raise CnnkitError(f"DCGAN needs square images, {config.dataset} has {height}×{width}")
    classes = num_classes if config.class_conditional else 0
    g_kwargs = dict(nz=config.nz, img_size=height, channels=channels, ngf=config.ngf,
                    num_classes=classes, embed_dim=config.embed_dim)
    d_kwargs = dict(img_size=height, channels=channels, ndf=config.ndf, num_classes=classes)
    return (create_model("dcgan_generator", **g_kwargs),
            create_model("dcgan_discriminator", **d_kwargs), g_kwargs, d_kwargs)


def grid_labels(num_classes: int, n: int) -> torch.Tensor | None:
    """Labels 0, 1, ..., K-1, 0, 1, ...: with K columns, each column of the grid is one class."""
    return torch.arange(n) % num_classes if num_classes else None


# --- the run ---

def train_gan(config: GanConfig, *, log=print) -> GanResult:
    """Train a DCGAN on `config.dataset`; write the run folder; return the per-epoch history."""
    with Run.open(config, task="dcgan", prefix=f"dcgan-{config.dataset}", log=log) as run:
        _train(run, run.config, run.log)
        return GanResult(run.dir, run.history, run.train_seconds)


def _train(run: Run, config: GanConfig, log) -> None:
    data = load_dataset(config.dataset, "train", data_dir=Path(config.data_dir).expanduser(),
                        mirror=config.mirror, quiet=config.quiet)
    if data.labels.dim() != 1:
        raise CnnkitError(f"{config.dataset} has sequence labels; DCGAN needs one class per image")
    # mean = std = 0.5 makes the loader's (x/255 − mean)/std exactly the [-1, 1] scaling.
    channels = data.image_shape[0]
    data = replace(data, mean=(0.5,) * channels, std=(0.5,) * channels)
    loader = InMemoryLoader(data, config.batch_size, shuffle=True, drop_last=True,
                            seed=config.seed, rank=run.env.rank, world_size=run.env.world_size)
    generator, discriminator, g_kwargs, d_kwargs = build_networks(config, data.image_shape,
                                                                  len(data.classes))
    generator, net_g = run.prepare(generator)
    discriminator, net_d = run.prepare(discriminator)
    betas = (config.beta1, config.beta2)
    opt_g = torch.optim.Adam(generator.parameters(), lr=config.lr, betas=betas)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=config.lr, betas=betas)
    step_losses: dict[str, list[float]] = {"d": [], "g": []}  # per step, for losses.png
    run.restore(models={"generator": generator, "discriminator": discriminator},
                optimizers={"generator": opt_g, "discriminator": opt_d},
                extra={"step_losses": step_losses},
                spec={"models": {"generator": {"name": "dcgan_generator", "kwargs": g_kwargs},
                                 "discriminator": {"name": "dcgan_discriminator",
                                                   "kwargs": d_kwargs}},
                      "infer": "generator", "classes": data.classes, "mean": [0.5] * channels,
                      "std": [0.5] * channels, "image_shape": list(data.image_shape)})
    step_losses = run.extra["step_losses"]
    # The grid's noise has its own generator: the same images are tracked across epochs and resumes.
    fixed_z = torch.randn(config.grid_size, config.nz,
                          generator=torch.Generator().manual_seed(config.seed + 1))
    fixed_labels = grid_labels(generator.num_classes, config.grid_size)
    if not run.resuming:
        log(f"DCGAN{' (class-conditional)' if config.class_conditional else ''}: G "
            f"{count_parameters(generator):,} / D {count_parameters(discriminator):,} parameters "
            f"| {config.dataset}: {len(data)} images {data.image_shape} | {config.epochs} epochs "
            f"× {len(loader)} steps | {run.device.type}, {run.precision} | run {run.dir}")

    for epoch, batches in run.epochs(loader, epochs=config.epochs):
        generator.train()
        discriminator.train()
        for real, labels in batches:  # real: (B, C, H, W) in [-1, 1]
            cond = labels if config.class_conditional else None
            z = torch.randn(len(real), config.nz).to(run.device)  # (B, nz)
            with run.autocast():
                fake = net_g(z, cond)  # (B, C, H, W)
                # D step: real → 1, fake → 0; fake detached so that G gets no gradient from it.
                logits_real = net_d(real, cond).float()  # (B,)
                logits_fake = net_d(fake.detach(), cond).float()
            d_loss = (F.binary_cross_entropy_with_logits(logits_real, torch.ones_like(logits_real))
                      + F.binary_cross_entropy_with_logits(logits_fake,
                                                           torch.zeros_like(logits_fake)))
            d_value = run.step(d_loss, opt_d, name="d_loss")
            # G step, non-saturating: maximise log D(G(z)) rather than minimise log(1 − D(G(z))),
            # whose gradient vanishes while D still rejects the fakes easily (Goodfellow et al. §3).
            # The plain D: its DDP twin would all-reduce D's gradients of this step for nothing.
            with run.autocast():
                logits_gen = discriminator(fake, cond).float()
            g_loss = F.binary_cross_entropy_with_logits(logits_gen, torch.ones_like(logits_gen))
            g_value = run.step(g_loss, opt_g, name="g_loss")
            step_losses["d"].append(d_value)
            step_losses["g"].append(g_value)
            run.sums["d_loss"] += d_value * len(real)
            run.sums["g_loss"] += g_value * len(real)
            run.sums["d_real"] += torch.sigmoid(logits_real).sum().item()  # mean D(x) → 1/2
            run.sums["d_fake"] += torch.sigmoid(logits_fake).sum().item()
            run.sums["seen"] += len(real)
        if not batches.complete:  # stopped mid-epoch: last.pt holds the position
            break
        sums = run.reduce(run.sums)
        if run.env.is_main:
            _write_figures(run.dir, epoch, step_losses, generator, fixed_z, fixed_labels,
                           list(data.classes))
        run.end_epoch({k: sums[k] / sums["seen"] for k in ("d_loss", "g_loss", "d_real", "d_fake")},
                      batches=batches)
    run.finish()


# --- figures ---

def _write_figures(run_dir: Path, epoch: int, step_losses, generator, fixed_z,
                   fixed_labels, classes: list[str]) -> None:
    """This epoch's sample grid of the fixed noise (conditional: each column's class named
    above it), and the loss plot."""
    from cnnkit.viz import image_grid  # noqa: PLC0415  (matplotlib: only once there is output)
    was_training = generator.training
    generator.eval()
    device = next(generator.parameters()).device
    with torch.inference_mode():
        labels = fixed_labels.to(device) if fixed_labels is not None else None
        samples = generator(fixed_z.to(device), labels).cpu()  # (grid_size, C, H, W) in [-1, 1]
    generator.train(was_training)
    nrow = generator.num_classes or 8
    labelled = generator.num_classes and len(samples) >= generator.num_classes
    image_grid(samples, run_dir / f"samples_epoch{epoch + 1:03d}.png", nrow=nrow,
               value_range=(-1.0, 1.0), title=f"DCGAN, epoch {epoch + 1}, fixed noise",
               col_labels=[str(c) for c in classes] if labelled else None)
    plot_gan_losses(step_losses, run_dir / "losses.png")


def smooth(values: list[float], beta: float = 0.98) -> list[float]:
    """Bias-corrected exponential moving average (TensorBoard's smoothing, Adam's correction)."""
    out, average = [], 0.0
    for i, value in enumerate(values, start=1):
        average = beta * average + (1 - beta) * value
        out.append(average / (1 - beta ** i))
    return out


def plot_gan_losses(step_losses: dict[str, list[float]], path) -> Path:
    """D and G loss per step: faint raw values, smoothed curves on top."""
    from cnnkit.viz.plots import plt, save_figure  # noqa: PLC0415
    fig, ax = plt.subplots(figsize=(8, 4), layout="constrained")
    for key, label, color in (("d", "discriminator", "tab:blue"), ("g", "generator", "tab:orange")):
        values = step_losses[key]
        steps = range(1, len(values) + 1)
        ax.plot(steps, values, color=color, alpha=0.2, linewidth=0.8)
        ax.plot(steps, smooth(values), color=color, label=f"{label} (smoothed)")
    ax.set(xlabel="step", ylabel="BCE loss", title="DCGAN losses")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path, title="DCGAN losses per step")
