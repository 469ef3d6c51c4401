"""`train_gan(config)`: DCGAN's adversarial training in one function that reads top to bottom.

Per step (Goodfellow et al. 2014, https://arxiv.org/abs/1406.2661, with the non-saturating
generator loss of its §3): D takes one Adam step on BCE(D(x), 1) + BCE(D(G(z)), 0), then G one on
BCE(D(G(z)), 1). Hyperparameters are DCGAN's (Radford et al. 2016, §4): Adam lr 2e-4, β1 = 0.5,
batch 128, images scaled to [-1, 1] to match G's Tanh.
The run folder gets config.yaml, metrics.csv (one row per epoch), a sample grid of fixed noise per
epoch, losses.png (per-step losses, smoothed) and last.pt; a run resumes exactly from last.pt,
since the data order depends only on (seed, epoch) and the RNG state is saved with the weights.
"""
from __future__ import annotations

import csv
import io
import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

from cnnkit.data import InMemoryLoader, load_dataset
from cnnkit.gan.dcgan import Discriminator, Generator, generate
from cnnkit.models._weights import read_checkpoint
from cnnkit.train.checkpoint import new_run_dir, save_checkpoint
from cnnkit.train.config import ConfigBase, config_field
from cnnkit.utils import CnnkitError, atomic_write_text

DEFAULT_EPOCHS = 5
METRIC_COLUMNS = ["epoch", "d_loss", "g_loss", "d_real", "d_fake", "epoch_s", "img_per_s"]


@dataclass
class GanConfig(ConfigBase):
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
    epochs: int | None = config_field(None, f"epochs (default {DEFAULT_EPOCHS}; with --resume: the run's)")
    batch_size: int = config_field(128, "images per step")
    lr: float = config_field(2e-4, "Adam learning rate of both networks")
    beta1: float = config_field(0.5, "Adam β1 (0.5: DCGAN §4; 0.9 oscillates)")
    beta2: float = config_field(0.999, "Adam β2")
    # --- reproducibility and output ---
    seed: int = config_field(0, "seed for initialisation, data order, noise and the fixed sample grid")
    threads: int = config_field(0, "torch threads (0: torch's default)")
    grid_size: int = config_field(64, "images in each epoch's sample grid")
    out_dir: str = config_field("runs", "where run folders are created")
    name: str | None = config_field(None, "run folder name (default: dcgan-<dataset>-<time>)")
    resume: str | None = config_field(None, "continue the run in this folder (or from this checkpoint)")
    quiet: bool = config_field(False, "no progress bars")

    def validate(self) -> "GanConfig":
        positive = {"nz": self.nz, "ngf": self.ngf, "ndf": self.ndf, "embed_dim": self.embed_dim,
                    "batch_size": self.batch_size, "lr": self.lr, "grid_size": self.grid_size,
                    "epochs": self.epochs if self.epochs is not None else 1}
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


# --- set-up ---

def build_networks(config: GanConfig, image_shape, num_classes: int):
    """(G, D, their constructor keywords) for images of `image_shape` (C, H, W)."""
    channels, height, width = image_shape
    if height != width:
        raise CnnkitError(f"DCGAN needs square images, {config.dataset} has {height}×{width}")
    classes = num_classes if config.class_conditional else 0
    g_kwargs = dict(nz=config.nz, img_size=height, channels=channels, ngf=config.ngf,
                    num_classes=classes, embed_dim=config.embed_dim)
    d_kwargs = dict(img_size=height, channels=channels, ndf=config.ndf, num_classes=classes)
    return Generator(**g_kwargs), Discriminator(**d_kwargs), g_kwargs, d_kwargs


def load_gan_checkpoint(path: str | Path) -> dict:
    """A DCGAN checkpoint (a run folder means its last.pt), with a one-line error otherwise."""
    ckpt = read_checkpoint(path)
    if ckpt.get("kind") != "dcgan":
        raise CnnkitError(f"{path} is not a DCGAN checkpoint (train one with `cnnkit gan train`)")
    return ckpt


def generator_from_checkpoint(ckpt: dict) -> Generator:
    generator = Generator(**ckpt["generator_kwargs"])
    generator.load_state_dict(ckpt["generator"])
    return generator.eval()


def grid_labels(generator: Generator, n: int) -> torch.Tensor | None:
    """Labels 0, 1, ..., K-1, 0, 1, ...: with K columns, each column of the grid is one class."""
    return torch.arange(n) % generator.num_classes if generator.num_classes else None


# --- the run ---

def train_gan(config: GanConfig, *, log=print) -> GanResult:
    """Train a DCGAN on `config.dataset`; write the run folder; return the per-epoch history."""
    ckpt = None
    if config.resume:  # the saved config, with this call's epochs (to extend a run) and quiet
        ckpt = load_gan_checkpoint(config.resume)
        resume_path = Path(config.resume)
        run_dir = resume_path if resume_path.is_dir() else resume_path.parent
        saved = GanConfig.from_dict(ckpt["config"])
        config = replace(saved, epochs=config.epochs or saved.epochs, quiet=config.quiet,
                         resume=None)
    config.validate()
    config.epochs = config.epochs or DEFAULT_EPOCHS
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)

    data = load_dataset(config.dataset, "train", data_dir=Path(config.data_dir).expanduser(),
                        mirror=config.mirror, quiet=config.quiet)
    if data.labels.dim() != 1:
        raise CnnkitError(f"{config.dataset} has sequence labels; DCGAN needs one class per image")
    # mean = std = 0.5 makes the loader's (x/255 − mean)/std exactly the [-1, 1] scaling.
    channels = data.image_shape[0]
    data = replace(data, mean=(0.5,) * channels, std=(0.5,) * channels)
    loader = InMemoryLoader(data, config.batch_size, shuffle=True, drop_last=True, seed=config.seed)
    if len(loader) == 0:
        raise CnnkitError(f"--batch-size {config.batch_size} is larger than the training set "
                          f"({len(data)} images)")
    generator, discriminator, g_kwargs, d_kwargs = build_networks(config, data.image_shape,
                                                                  len(data.classes))
    betas = (config.beta1, config.beta2)
    opt_g = torch.optim.Adam(generator.parameters(), lr=config.lr, betas=betas)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=config.lr, betas=betas)
    # The grid's noise has its own generator: the same images are tracked across epochs and resumes.
    fixed_z = torch.randn(config.grid_size, config.nz,
                          generator=torch.Generator().manual_seed(config.seed + 1))
    fixed_labels = grid_labels(generator, config.grid_size)

    history: list[dict] = []
    step_losses: dict[str, list[float]] = {"d": [], "g": []}
    start_epoch, step = 0, 0
    if ckpt is not None:
        generator.load_state_dict(ckpt["generator"])
        discriminator.load_state_dict(ckpt["discriminator"])
        opt_g.load_state_dict(ckpt["optimizer_g"])
        opt_d.load_state_dict(ckpt["optimizer_d"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        start_epoch, step = ckpt["epoch"] + 1, ckpt["step"]
        history = list(ckpt["history"])
        step_losses = {k: list(v) for k, v in ckpt["step_losses"].items()}
        log(f"resuming {run_dir} after epoch {start_epoch}/{config.epochs}")
    else:
        run_dir = new_run_dir(config.out_dir, config.name, f"dcgan-{config.dataset}")
        log(f"DCGAN{' (class-conditional)' if config.class_conditional else ''}: G "
            f"{_count(generator):,} / D {_count(discriminator):,} parameters | {config.dataset}: "
            f"{len(data)} images {data.image_shape} | {config.epochs} epochs × {len(loader)} steps "
            f"| run {run_dir}")
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))

    train_start = time.perf_counter()
    for epoch in range(start_epoch, config.epochs):
        generator.train()
        discriminator.train()
        loader.set_epoch(epoch)
        sums = {"d_loss": 0.0, "g_loss": 0.0, "d_real": 0.0, "d_fake": 0.0}
        t0, seen = time.perf_counter(), 0
        bar = progress_bar(len(loader), f"epoch {epoch + 1}/{config.epochs}", config.quiet)
        for real, labels in loader:  # real: (B, C, H, W) in [-1, 1]
            cond = labels if config.class_conditional else None
            z = torch.randn(len(real), config.nz)  # (B, nz)
            fake = generator(z, cond)  # (B, C, H, W)

            # D step: real → 1, fake → 0; fake detached so that G gets no gradient from it.
            logits_real = discriminator(real, cond)  # (B,)
            logits_fake = discriminator(fake.detach(), cond)
            d_loss = (F.binary_cross_entropy_with_logits(logits_real, torch.ones_like(logits_real))
                      + F.binary_cross_entropy_with_logits(logits_fake,
                                                           torch.zeros_like(logits_fake)))
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()

            # G step, non-saturating: maximise log D(G(z)) rather than minimise log(1 − D(G(z))),
            # whose gradient vanishes while D still rejects the fakes easily (Goodfellow et al. §3).
            logits_gen = discriminator(fake, cond)
            g_loss = F.binary_cross_entropy_with_logits(logits_gen, torch.ones_like(logits_gen))
            opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
            opt_g.step()

            d_value, g_value = d_loss.item(), g_loss.item()
            if not (math.isfinite(d_value) and math.isfinite(g_value)):
                bar.close()
                raise CnnkitError(f"losses became D {d_value}, G {g_value} at epoch {epoch + 1}, "
                                  f"step {step + 1}; try a lower --lr")
            step += 1
            step_losses["d"].append(d_value)
            step_losses["g"].append(g_value)
            sums["d_loss"] += d_value * len(real)
            sums["g_loss"] += g_value * len(real)
            sums["d_real"] += torch.sigmoid(logits_real).sum().item()  # mean D(x) → 1/2 at balance
            sums["d_fake"] += torch.sigmoid(logits_fake).sum().item()
            seen += len(real)
            bar.update(1)
            if step % 10 == 0:
                bar.set_postfix(d=f"{d_value:.3f}", g=f"{g_value:.3f}")
        bar.close()
        epoch_s = time.perf_counter() - t0
        row = {"epoch": epoch + 1, **{k: v / seen for k, v in sums.items()},
               "epoch_s": epoch_s, "img_per_s": seen / epoch_s}
        history.append(row)
        log(f"epoch {epoch + 1:3d}/{config.epochs}  D loss {row['d_loss']:.4f}  G loss "
            f"{row['g_loss']:.4f}  D(x) {row['d_real']:.3f}  D(G(z)) {row['d_fake']:.3f}  "
            f"{epoch_s:.1f} s")
        _write_epoch_outputs(run_dir, epoch, history, step_losses, generator, fixed_z,
                             fixed_labels)
        save_checkpoint(run_dir / "last.pt", {
            "kind": "dcgan", "generator": generator.state_dict(),
            "discriminator": discriminator.state_dict(), "optimizer_g": opt_g.state_dict(),
            "optimizer_d": opt_d.state_dict(), "rng": {"torch": torch.get_rng_state()},
            "epoch": epoch, "step": step, "history": history, "step_losses": step_losses,
            "config": config.to_dict(), "generator_kwargs": g_kwargs,
            "discriminator_kwargs": d_kwargs, "classes": data.classes,
            "image_size": list(data.image_shape)})
    return GanResult(run_dir, history, time.perf_counter() - train_start)


# --- helpers of the loop ---

def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())




def progress_bar(total: int, desc: str, quiet: bool):
    from tqdm import tqdm  # noqa: PLC0415
    return tqdm(total=total, desc=desc, leave=False, disable=quiet or not sys.stderr.isatty(),
                dynamic_ncols=True)


def _write_epoch_outputs(run_dir: Path, epoch: int, history, step_losses, generator, fixed_z,
                         fixed_labels) -> None:
    """metrics.csv, this epoch's sample grid of the fixed noise, and the loss plot."""
    from cnnkit.viz import image_grid  # noqa: PLC0415  (matplotlib: only once there is output)
    out = io.StringIO()
    table = csv.DictWriter(out, fieldnames=METRIC_COLUMNS)
    table.writeheader()
    table.writerows(history)
    atomic_write_text(run_dir / "metrics.csv", out.getvalue())
    was_training = generator.training
    generator.eval()
    with torch.inference_mode():
        samples = generator(fixed_z, fixed_labels)  # (grid_size, C, H, W) in [-1, 1]
    generator.train(was_training)
    nrow = generator.num_classes or 8
    image_grid(samples, run_dir / f"samples_epoch{epoch + 1:03d}.png", nrow=nrow,
               value_range=(-1.0, 1.0))
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


__all__ = ["GanConfig", "GanResult", "train_gan", "load_gan_checkpoint",
           "generator_from_checkpoint", "grid_labels", "generate", "plot_gan_losses", "smooth"]
