"""`train_cyclegan(config)`: the CycleGAN task, top to bottom; `translate_files` applies one.

CycleGAN (Zhu et al. 2017, https://arxiv.org/abs/1703.10593) learns G: A → B and F: B → A from
unpaired images, as the authors' implementation (junyanz/pytorch-CycleGAN-and-pix2pix,
models/cycle_gan_model.py) does it: per batch, one step of both generators on
  LSGAN adversarial loss (Mao et al. 2017; §4 "Training details": least squares instead of the
  log-likelihood, more stable) + λ·cycle loss ‖F(G(a)) − a‖₁ + ‖G(F(b)) − b‖₁ (§3.2, λ = 10)
  + 0.5·λ·identity loss ‖G(b) − b‖₁ + ‖F(a) − a‖₁ (§5.2, keeps the colours of paintings/photos),
then one step of both discriminators on real images and on generated ones drawn from a history
pool of 50 (Shrivastava et al. 2017), each discriminator loss halved ("slows down the rate at
which D learns relative to G"). Adam 2e-4, β1 = 0.5; the rate stays constant, then decays
linearly towards 0 over the last `decay_epochs` epochs (the paper: 100 + 100).
Resuming, limits and signals are cnnkit.engine.run.Run's; the pools ride in the checkpoint's
`per_rank`, their stored images and their own generator's state, so a resumed run is
bit-identical. Under torchrun each rank takes its slice of every global batch and keeps its own
pools; the gradients are averaged over the ranks before each step, so all ranks hold one model.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cnnkit.data import get_dataset_info, load_dataset
from cnnkit.data.array_dataset import resize_images
from cnnkit.data.imagefolder import decode_image
from cnnkit.data.unpaired import UnpairedDataset, UnpairedLoader, load_unpaired, to_unit_range
from cnnkit.diffusion.ema import EMA
from cnnkit.engine.checkpoint import TASKS, register_task
from cnnkit.engine.config import RunConfig, config_field
from cnnkit.engine.device import resolve_device
from cnnkit.engine.distributed import on_main
from cnnkit.engine.run import Run
from cnnkit.generation.judge import judge_generators, load_judge
from cnnkit.models import count_parameters, create_model
from cnnkit.models.cyclegan import UPSAMPLING, patch_side
from cnnkit.utils import CnnkitError, atomic_path

if "cyclegan" not in TASKS:
    register_task("cyclegan", "cnnkit cyclegan train", ("cyclegan translate",))

DIRECTIONS = ("AtoB", "BtoA")
# What best.pt keeps: the epoch whose worse direction is best, or each generator's own best epoch.
CHOICES = ("pair", "each")
# Each generator and the held-out column that scores its direction.
OWN_SCORE = {"generator_ab": "val_fid_ratio_ab", "generator_ba": "val_fid_ratio_ba"}


@dataclass
class CycleGanConfig(RunConfig):
    """`cnnkit cyclegan train`: CycleGAN (Zhu et al. 2017). The defaults are a CPU recipe (narrower
    generator, 64-pixel crops, a few epochs); the paper: --ngf 64 --n-blocks 9 (or 6 at 128 px)
    --load-size 286 --crop-size 256 --batch-size 1 --epochs 200 --decay-epochs 100."""
    fixed_on_resume: ClassVar[tuple[str, ...]] = (
        "dataset", "data_dir", "train_limit", "load_size", "load_size_b", "d_load_size_b",
        "min_load_size", "crop_size", "ngf", "n_blocks", "upsample", "ndf", "n_layers_d",
        "batch_size", "pool_size", "seed", "ema_decay", "val_images", "judge", "judge_size",
        "choose")

    # --- data ---
    dataset: str | None = config_field(None, "registered unpaired data set (horse2zebra, read from "
                                       "DATA_DIR/horse2zebra-128); unset: DATA_DIR itself holds "
                                       "trainA/ trainB/ testA/ testB/")
    data_dir: str = config_field("~/.cache/cnnkit", "where the data set lives (see --dataset)")
    train_limit: int | None = config_field(None, "train on the first N images of each domain only")
    load_size: int = config_field(72, "resize every image to this square side before cropping "
                                  "(0: keep the images' own, common size)")
    load_size_b: int | None = config_field(None, "resize domain B's training images to this side "
                                           "instead (default: --load-size): a training scale "
                                           "per direction, as each generator learns from its "
                                           "source domain's crops")
    d_load_size_b: int | None = config_field(None, "resize domain B's training images to this "
                                             "side for D_B's real examples only (default: B's "
                                             "scale above): D_B learns real B at one scale "
                                             "while F reads B at the scale it translates at")
    min_load_size: int | None = config_field(None, "scale augmentation: each step resizes its "
                                             "images to a side drawn from [this, --load-size] "
                                             "before cropping (default: off)")
    crop_size: int = config_field(64, "side of the random training crops (a multiple of 4)")
    hflip: bool = config_field(True, "random left-right flips")
    # --- the networks ---
    ngf: int = config_field(32, "generator width: channels of its first layer (paper: 64)")
    n_blocks: int = config_field(6, "residual blocks of each generator (paper: 9 at 256 px, "
                                 "6 at 128)")
    upsample: str = config_field("transpose", "the generator's up-sampling: transpose (the "
                                 "paper's) or resize (nearest + conv, no checkerboard)",
                                 choices=UPSAMPLING)
    ndf: int = config_field(64, "discriminator width: channels of its first layer (paper: 64)")
    n_layers_d: int = config_field(3, "strided layers of the PatchGAN (3: 70×70 patches)")
    # --- losses and optimisation ---
    lambda_cycle: float = config_field(10.0, "weight λ of the cycle-consistency loss")
    lambda_cycle_b: float | None = config_field(None, "λ for domain B's cycle ‖G(F(b)) − b‖₁ "
                                                "and G's identity loss on B instead (the "
                                                "authors' --lambda_B; default: --lambda-cycle): "
                                                "lower, F need not keep what G needs to "
                                                "redraw B")
    lambda_identity: float = config_field(0.5, "identity-loss weight, as a fraction of λ (0: off)")
    pool_size: int = config_field(50, "generated images kept for the discriminators (0: none)")
    epochs: int = config_field(6, "epochs in all (each: every image of the larger domain once)")
    decay_epochs: int | None = config_field(None, "the last N epochs decay the rate linearly "
                                            "towards 0 (default: half of --epochs)")
    batch_size: int = config_field(1, "image pairs per step (paper: 1)")
    lr: float = config_field(2e-4, "Adam learning rate of all four networks")
    beta1: float = config_field(0.5, "Adam β1")
    beta2: float = config_field(0.999, "Adam β2")
    ema_decay: float | None = config_field(None, "keep an exponential moving average of both "
                                           "generators' weights with this decay per step (e.g. "
                                           "0.999); grids, judging and translate use it "
                                           "(unset: the paper's last weights)")
    # --- choosing the epoch (never on the test images) ---
    val_images: int = config_field(0, "hold the last N training images of each domain out of "
                                   "training, for --judge to score every epoch on")
    judge: list[str] | None = config_field(None, "domain judges (`cnnkit train --dataset "
                                           "horse2zebra-domains` runs or .pt files): they judge "
                                           "each epoch on the held-out --val-images; best.pt "
                                           "keeps the epoch whose worse direction has the "
                                           "lowest FID / floor, averaged over the judges as "
                                           "`cyclegan eval` does (see --choose)")
    choose: str = config_field("pair", "what best.pt keeps under --judge: pair (the epoch "
                               "whose worse direction is closest to its floor) or each (each "
                               "generator from the epoch that brought its own direction "
                               "closest: G and F translate apart once trained)", choices=CHOICES)
    judge_size: int | None = config_field(None, "side the whole held-out and test images are "
                                          "translated at before the judge reads them (default: "
                                          "--crop-size; --load-size translates at the scale "
                                          "the crops were taken at)")
    grid_images: int = config_field(4, "fixed test images per direction in each epoch's grid")

    def validate(self) -> "CycleGanConfig":
        super().validate()
        positive = {"crop_size": self.crop_size, "ngf": self.ngf, "ndf": self.ndf,
                    "n_layers_d": self.n_layers_d, "epochs": self.epochs,
                    "batch_size": self.batch_size, "lr": self.lr, "grid_images": self.grid_images}
        non_negative = {"load_size": self.load_size, "n_blocks": self.n_blocks,
                        "lambda_cycle": self.lambda_cycle, "pool_size": self.pool_size,
                        "lambda_identity": self.lambda_identity,
                        "lambda_cycle_b": self.lambda_cycle_b or 0.0}
        for key, value in positive.items():
            if value <= 0:
                raise CnnkitError(f"--{key.replace('_', '-')} must be positive, got {value}")
        for key, value in non_negative.items():
            if value < 0:
                raise CnnkitError(f"--{key.replace('_', '-')} must be 0 or more, got {value}")
        if self.train_limit is not None and self.train_limit < 1:
            raise CnnkitError(f"--train-limit must be at least 1 image, got {self.train_limit}")
        if self.crop_size % 4:
            raise CnnkitError(f"--crop-size must be a multiple of 4 (the generator halves it "
                              f"twice), got {self.crop_size}")
        if patch_side(self.crop_size, self.n_layers_d) < 1:
            raise CnnkitError(f"--crop-size {self.crop_size} is too small for a {self.n_layers_d}-"
                              f"layer PatchGAN; raise it or lower --n-layers-d")
        if self.load_size and self.crop_size > self.load_size:
            raise CnnkitError(f"--crop-size {self.crop_size} is larger than --load-size "
                              f"{self.load_size}")
        for key in ("load_size_b", "d_load_size_b"):
            side = getattr(self, key)
            if side is not None and self.crop_size > side:
                raise CnnkitError(f"--crop-size {self.crop_size} is larger than "
                                  f"--{key.replace('_', '-')} {side}")
        if self.min_load_size is not None and not (
                self.load_size and self.crop_size <= self.min_load_size <= self.load_size):
            raise CnnkitError(f"--min-load-size {self.min_load_size} needs a --load-size and must "
                              f"lie between --crop-size {self.crop_size} and --load-size "
                              f"{self.load_size}")
        if self.decay_epochs is not None and not 0 <= self.decay_epochs <= self.epochs:
            raise CnnkitError(f"--decay-epochs must be in [0, --epochs {self.epochs}], got "
                              f"{self.decay_epochs}")
        for key in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise CnnkitError(f"--{key} must be in [0, 1), got {getattr(self, key)}")
        if self.ema_decay is not None and not 0.0 <= self.ema_decay < 1.0:
            raise CnnkitError(f"--ema-decay must be in [0, 1), got {self.ema_decay}")
        if (self.judge is None) != (self.val_images == 0):
            raise CnnkitError("--val-images and --judge go together: the judge scores each epoch "
                              "on the held-out images")
        if self.choose == "each" and self.judge is None:
            raise CnnkitError("--choose each picks each generator's epoch by its held-out "
                              "score: it needs --val-images and --judge")
        if self.judge_size is not None and (self.judge_size < 4 or self.judge_size % 4):
            raise CnnkitError(f"--judge-size must be a positive multiple of 4 (the generator "
                              f"halves it twice), got {self.judge_size}")
        if self.judge is not None and self.val_images < 3:
            raise CnnkitError(f"--val-images must be at least 3 (FID and KID need 3 images per "
                              f"domain), got {self.val_images}")
        return self

    @property
    def judged_side(self) -> int:
        """The side whole held-out photos (and the grids' test photos) are translated at."""
        return self.judge_size or self.crop_size

    def resolve(self) -> "CycleGanConfig":
        self.validate()
        if self.decay_epochs is None:
            self.decay_epochs = self.epochs // 2
        if isinstance(self.judge, str):  # one judge, as runs before several were saved
            self.judge = [self.judge]
        if self.judge is not None:  # absolute, so that a resume from elsewhere finds them
            self.judge = [str(Path(path).expanduser().resolve()) for path in self.judge]
        return self


@dataclass
class CycleGanResult:
    run_dir: Path
    history: list[dict]
    train_seconds: float


# --- the losses (models/cycle_gan_model.py's backward_G and backward_D_basic) ---

def lsgan_loss(prediction: torch.Tensor, real: bool) -> torch.Tensor:
    """Least-squares GAN loss: the mean of (D(x) − 1)² for real targets, D(x)² for fake ones."""
    return F.mse_loss(prediction.float(), torch.full_like(prediction.float(), float(real)))


def discriminator_loss(discriminator: nn.Module, real: torch.Tensor,
                       fake: torch.Tensor) -> torch.Tensor:
    """½ (LSGAN(D(real), 1) + LSGAN(D(fake), 0)); the fakes come detached. One forward for both
    halves: instance norm treats every image on its own, so the batch changes nothing."""
    logits = discriminator(torch.cat([real, fake.detach()]))  # (2B, 1, H', W')
    on_real, on_fake = logits.split(len(real))
    return 0.5 * (lsgan_loss(on_real, True) + lsgan_loss(on_fake, False))


def generator_losses(g_ab: nn.Module, g_ba: nn.Module, d_a: nn.Module, d_b: nn.Module,
                     real_a: torch.Tensor, real_b: torch.Tensor, *, lambda_cycle: float = 10.0,
                     lambda_identity: float = 0.5, lambda_cycle_b: float | None = None
                     ) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """({name: loss}, fake_b, fake_a) for one batch; "g_total" is what both generators minimise.

    adv_ab: D_B should take G(a) for real; adv_ba likewise D_A and F(b).
    cycle_a = λ_A‖F(G(a)) − a‖₁, cycle_b = λ_B‖G(F(b)) − b‖₁; idt_a = ½λ_B‖G(b) − b‖₁ (G applied
    to what is already B should change nothing), idt_b = ½λ_A‖F(a) − a‖₁ (the authors' names:
    idt_A, idt_B, and their weights: lambda_A = `lambda_cycle`, lambda_B = `lambda_cycle_b`, by
    default the same).
    """
    lambda_a = lambda_cycle
    lambda_b = lambda_cycle if lambda_cycle_b is None else lambda_cycle_b
    n = len(real_a)
    identity = lambda_identity > 0
    # G(a) and G(b) in one forward (per-image norm: the same as two), likewise F(b) and F(a).
    out_ab = g_ab(torch.cat([real_a, real_b]) if identity else real_a)
    out_ba = g_ba(torch.cat([real_b, real_a]) if identity else real_b)
    fake_b, fake_a = out_ab[:n], out_ba[:n]
    losses = {"adv_ab": lsgan_loss(d_b(fake_b), True), "adv_ba": lsgan_loss(d_a(fake_a), True),
              "cycle_a": lambda_a * F.l1_loss(g_ba(fake_b).float(), real_a.float()),
              "cycle_b": lambda_b * F.l1_loss(g_ab(fake_a).float(), real_b.float())}
    zero = real_a.new_zeros((), dtype=torch.float32)
    losses["idt_a"] = (lambda_b * lambda_identity * F.l1_loss(out_ab[n:].float(), real_b.float())
                       if identity else zero)
    losses["idt_b"] = (lambda_a * lambda_identity * F.l1_loss(out_ba[n:].float(), real_a.float())
                       if identity else zero)
    losses["g_total"] = sum(losses.values())
    return losses, fake_b, fake_a


def lr_factor(epoch: int, epochs: int, decay_epochs: int) -> float:
    """The authors' linear rule, 1 − max(0, epoch + 1 − n_epochs) / (n_epochs_decay + 1) with
    epoch counted from 0: 1 for the first epochs − decay_epochs epochs, then falling by
    1/(decay_epochs + 1) per epoch, to 1/(decay_epochs + 1) in the last."""
    constant = epochs - decay_epochs
    return 1.0 - max(0, epoch + 1 - constant) / (decay_epochs + 1)


class ImagePool:
    """The history of generated images a discriminator also sees (Shrivastava et al. 2017; the
    authors' util/image_pool.py): the first `size` images pass through and are stored; after that
    each image, with probability ½, is swapped for a stored one chosen uniformly (and stored in its
    place), else passes through. Draws come from the pool's own generator, saved with its images
    in `state_dict`, so a resumed run draws the same."""

    def __init__(self, size: int, seed: int = 0, device: torch.device | str = "cpu"):
        self.size, self.device = size, torch.device(device)
        self.images: list[torch.Tensor] = []  # (C, H, W) each; replaced, never changed in place
        self.generator = torch.Generator().manual_seed(seed)

    def query(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) generated images → (B, C, H, W) for the discriminator, detached."""
        images = images.detach()
        if self.size == 0:
            return images
        out = []
        for image in images:
            if len(self.images) < self.size:
                self.images.append(image.clone())  # a copy: a view would keep its whole batch
                out.append(image)
            elif torch.rand((), generator=self.generator).item() < 0.5:
                k = int(torch.randint(self.size, (), generator=self.generator))
                out.append(self.images[k])
                self.images[k] = image.clone()
            else:
                out.append(image)
        return torch.stack(out)

    def state_dict(self) -> dict:
        return {"images": list(self.images), "rng": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.images = [image.to(self.device) for image in state["images"]]
        self.generator.set_state(state["rng"])


# --- data ---

def load_domains(config: CycleGanConfig, split: str, *, load_size: int | None,
                 limit: int | None = None) -> tuple[UnpairedDataset, tuple[str, str]]:
    """(split of both domains, their names): a registered set, or the folder --data-dir."""
    data_dir = Path(config.data_dir).expanduser()
    if config.dataset is None:
        if not data_dir.is_dir():
            raise CnnkitError(f"--data-dir {data_dir} does not exist; give a folder with trainA/ "
                              f"trainB/ testA/ testB/, or --dataset horse2zebra")
        return load_unpaired(data_dir, split, load_size=load_size, limit=limit,
                             quiet=config.quiet), ("A", "B")
    info = get_dataset_info(config.dataset)
    if info.task != "translate":
        raise CnnkitError(f"{config.dataset} is a {info.task} data set; CycleGAN needs two "
                          f"unpaired domains: --dataset horse2zebra, or --data-dir ROOT with "
                          f"trainA/ trainB/ testA/ testB/")
    ds = load_dataset(config.dataset, split, data_dir=data_dir, image_size=load_size,
                      quiet=config.quiet)
    if limit:
        ds = replace(ds, a=ds.a[:limit], b=ds.b[:limit], files_a=ds.files_a[:limit],
                     files_b=ds.files_b[:limit])
    return ds, tuple(info.classes)


def hold_out(config: CycleGanConfig, data: UnpairedDataset
             ) -> tuple[UnpairedDataset, dict[str, UnpairedDataset]]:
    """(the training images less the last --val-images of each domain, {"val": those held out,
    "floor": the rest}) — the latter two at the images' own size, as the test images are judged,
    so that the validation floor (real training vs real held-out images) is measured alike."""
    n = config.val_images
    if min(len(data.a), len(data.b)) <= n:
        raise CnnkitError(f"--val-images {n} leaves no training images: the domains have "
                          f"{len(data.a)} and {len(data.b)}")
    native, _ = load_domains(config, "train", load_size=None, limit=config.train_limit)

    def part(ds: UnpairedDataset, rows: slice) -> UnpairedDataset:
        b_for_d = ds.b_for_discriminator
        return replace(ds, a=ds.a[rows], b=ds.b[rows], files_a=ds.files_a[rows],
                       files_b=ds.files_b[rows], b_for_discriminator=None if b_for_d is None
                       else b_for_d[rows])
    return part(data, slice(-n)), {"val": part(native, slice(-n, None)),
                                   "floor": part(native, slice(-n))}


def validation_row(g_ab: nn.Module, g_ba: nn.Module, held_out: dict, domains,
                   config: CycleGanConfig, device) -> dict[str, float]:
    """The held-out judges' verdict on the held-out training images (generation/judge.
    judge_generators) as metrics.csv columns, each the mean over the judges (as `cyclegan eval`
    summarises several); val_fid_ratio, the worse direction's FID / floor, picks best.pt.
    Several judges: one judge's features are a noisy ruler (the same generators' FID / floor
    differs several-fold between judges of one recipe), and the test verdict is their mean."""
    # The judges' view of the real photos is the same every epoch: kept in held_out, made once.
    verdicts = judge_generators(g_ab, g_ba, held_out["judges"], held_out["val"],
                                held_out["floor"], domains, image_size=config.judged_side,
                                device=device, seed=config.seed,
                                references=held_out.setdefault("references", {}))
    row = {}
    for name, key in (("AtoB", "ab"), ("BtoA", "ba")):
        row[f"val_success_{key}"] = float(np.mean([v.directions[name].success for v in verdicts]))
        row[f"val_fid_ratio_{key}"] = float(np.mean([v.directions[name].fid_ratio
                                                     for v in verdicts]))
    row["val_fid_ratio"] = max(row["val_fid_ratio_ab"], row["val_fid_ratio_ba"])
    return row


def keep_each_best(kept: dict, row: dict, epoch: int, nets: dict, emas: dict) -> list[str]:
    """Update `kept` ({generator: {"epoch", "value", "model", "ema"}}, the run's extra) with the
    generators whose own direction's held-out FID / floor (OWN_SCORE) is the lowest so far at
    this `epoch`; copies of their weights and averages, as translate and judging read them.
    Returns the generators updated."""
    improved = []
    for part, key in OWN_SCORE.items():
        value = row[key]
        if math.isnan(value) or (part in kept and value >= kept[part]["value"]):
            continue
        averaged = emas[part].state_dict() if part in emas else None
        if averaged is not None:  # state_dict() hands out the live tensors: keep copies
            averaged = {**averaged, "model": _copied(averaged["model"])}
        kept[part] = {"epoch": epoch, "value": value, "ema": averaged,
                      "model": _copied(nets[part].state_dict())}
        improved.append(part)
    return improved


def _copied(state: dict) -> dict:
    return {k: v.detach().clone() for k, v in state.items()}


def with_each_best(state: dict, kept: dict) -> dict:
    """best.pt under --choose each: this epoch's envelope with each generator (and its average)
    from its own best epoch, the choice recorded under best["each"]; discriminators, optimisers
    and position stay this epoch's (best.pt is read for inference; resume reads last.pt)."""
    state = {**state, "models": dict(state["models"]), "ema": dict(state["ema"]),
             "extra": {k: v for k, v in state["extra"].items() if k != "each_best"}}
    for part, best in kept.items():
        state["models"][part] = best["model"]
        if best["ema"] is not None:
            state["ema"][part] = best["ema"]
    state["best"] = {**state["best"], "each": {part: {"epoch": best["epoch"], "value": best[
        "value"], "metric": OWN_SCORE[part]} for part, best in kept.items()}}
    return state


def build_networks(config: CycleGanConfig) -> tuple[dict, dict]:
    """({part: module}, {part: {"name", "kwargs"}}): G: A → B, F: B → A, D_A, D_B."""
    g_name = "cyclegan_resnet_9blocks" if config.n_blocks == 9 else "cyclegan_resnet_6blocks"
    g_kwargs = dict(ngf=config.ngf, n_blocks=config.n_blocks, upsample=config.upsample)
    d_kwargs = dict(ndf=config.ndf, n_layers=config.n_layers_d)
    specs = {"generator_ab": {"name": g_name, "kwargs": g_kwargs},
             "generator_ba": {"name": g_name, "kwargs": g_kwargs},
             "discriminator_a": {"name": "patchgan_70", "kwargs": d_kwargs},
             "discriminator_b": {"name": "patchgan_70", "kwargs": d_kwargs}}
    return {part: create_model(s["name"], **s["kwargs"]) for part, s in specs.items()}, specs


# --- the run ---

def train_cyclegan(config: CycleGanConfig, *, log=print) -> CycleGanResult:
    """Train a CycleGAN; write the run folder; return the per-epoch history."""
    prefix = f"cyclegan-{config.dataset or Path(config.data_dir).name}"
    with Run.open(config, task="cyclegan", prefix=prefix, log=log) as run:
        _train(run, run.config, run.log)
        return CycleGanResult(run.dir, run.history, run.train_seconds)


def _training_data(config: CycleGanConfig, run: Run):
    """(this rank's loader, the domain names, the held-out images with their judges or None, the
    fixed test images of the grids)."""
    data, domains = load_domains(config, "train", load_size=config.load_size or None,
                                 limit=config.train_limit)
    if config.load_size_b:  # B at its own scale, resized from the files (not from A's scale)
        own_b, _ = load_domains(config, "train", load_size=config.load_size_b,
                                limit=config.train_limit)
        data = replace(data, b=own_b.b)
    if config.d_load_size_b:  # D_B's real B at a scale of its own, from the files too
        seen_by_d, _ = load_domains(config, "train", load_size=config.d_load_size_b,
                                    limit=config.train_limit)
        data = replace(data, b_for_discriminator=seen_by_d.b)
    held_out = None
    if config.val_images:
        data, held_out = hold_out(config, data)
        held_out["judges"] = [load_judge(path, domains) for path in config.judge]
    loader = UnpairedLoader(data, config.batch_size, crop_size=config.crop_size,
                            hflip=config.hflip, min_side=config.min_load_size,
                            seed=config.seed, rank=run.env.rank, world_size=run.env.world_size)
    test, _ = load_domains(config, "test", load_size=None, limit=config.grid_images)
    # The grids show whole test images at the side they are judged at, the same every epoch.
    fixed = {d: to_unit_range(resize_images(x, config.judged_side)).to(run.device)
             for d, x in (("a", test.a), ("b", test.b))}
    return loader, domains, held_out, fixed


def _train(run: Run, config: CycleGanConfig, log) -> None:
    env = run.env
    loader, domains, held_out, fixed = _training_data(config, run)
    nets, specs = build_networks(config)
    # Not DDP-wrapped: G and F run twice per step and the discriminators are frozen in turn,
    # which DDP's hooks cannot follow; run.step(average=True) means the gradients over the ranks.
    nets = {part: run.prepare(net)[0] for part, net in nets.items()}
    g_ab, g_ba, d_a, d_b = (nets[p] for p in ("generator_ab", "generator_ba", "discriminator_a",
                                              "discriminator_b"))
    betas = (config.beta1, config.beta2)
    opt_g = torch.optim.Adam([*g_ab.parameters(), *g_ba.parameters()], lr=config.lr, betas=betas)
    opt_d = torch.optim.Adam([*d_a.parameters(), *d_b.parameters()], lr=config.lr, betas=betas)
    # Separate seeds: no two pools (two per rank) may draw the same swaps.
    pools = {d: ImagePool(config.pool_size, config.seed + 1 + i + 2 * env.rank, run.device)
             for i, d in enumerate("ab")}
    emas = {} if config.ema_decay is None else {
        part: EMA(nets[part], decay=config.ema_decay) for part in ("generator_ab", "generator_ba")}
    run.restore(models=nets, optimizers={"generators": opt_g, "discriminators": opt_d},
                ema=emas, per_rank={f"pool_{d}": pool for d, pool in pools.items()},
                spec={"models": specs, "infer": "generator_ab", "classes": list(domains),
                      "mean": [0.5] * 3, "std": [0.5] * 3,
                      "image_shape": [3, config.crop_size, config.crop_size]})
    if not run.resuming:
        log(_start_line(run, config, loader, domains, g_ab, d_a))

    for epoch, batches in run.epochs(loader, epochs=config.epochs):
        lr = config.lr * lr_factor(epoch, config.epochs, config.decay_epochs)
        for group in [*opt_g.param_groups, *opt_d.param_groups]:
            group["lr"] = lr
        for net in nets.values():
            net.train()
        # (B, 3, crop, crop) each, in [-1, 1]; real_b_for_d is real_b unless --d-load-size-b
        for real_a, real_b, real_b_for_d in batches:
            # Generators: the discriminators' weights get no gradient from this step.
            for net in (d_a, d_b):
                net.requires_grad_(False)
            with run.autocast():
                losses, fake_b, fake_a = generator_losses(
                    g_ab, g_ba, d_a, d_b, real_a, real_b, lambda_cycle=config.lambda_cycle,
                    lambda_identity=config.lambda_identity, lambda_cycle_b=config.lambda_cycle_b)
            run.step(losses["g_total"], opt_g, name="g_loss", average=True)
            for ema in emas.values():
                ema.update()
            for net in (d_a, d_b):
                net.requires_grad_(True)
            # Discriminators: D_A tells real a from F(b), D_B real b from G(a); fakes via pools.
            with run.autocast():
                losses["d_a"] = discriminator_loss(d_a, real_a, pools["a"].query(fake_a))
                losses["d_b"] = discriminator_loss(d_b, real_b_for_d,
                                                   pools["b"].query(fake_b))
            run.step(losses["d_a"] + losses["d_b"], opt_d, name="d_loss", average=True)
            for key, value in losses.items():
                run.sums[key] += value.item() * len(real_a)
            run.sums["seen"] += len(real_a)
        if not batches.complete:  # stopped mid-epoch: last.pt holds the position and the pools
            break
        # What translate and judging will use: the averaged weights where the run keeps them.
        # Every rank holds the same weights; rank 0 draws and judges.
        shown = [emas[p].model if emas else nets[p] for p in ("generator_ab", "generator_ba")]
        if env.is_main:
            _write_grid(run.dir / f"translations_epoch{epoch + 1:03d}.png", f"epoch {epoch + 1}",
                        *shown, fixed, domains)
        sums = run.reduce(run.sums)
        # (in the step's order: reduce() sorts the keys under torchrun)
        row = {"lr": lr, **{k: sums[k] / sums["seen"] for k in run.sums if k != "seen"}}
        if held_out is not None:
            row.update(on_main(env, validation_row, *shown, held_out, domains, config,
                               run.device))
        chosen = _record_epoch(run, config, row, batches, nets, emas, domains, log)
        if env.is_main:
            _draw_after_epoch(run, chosen, shown, fixed, domains)
    run.finish()


def _start_line(run: Run, config: CycleGanConfig, loader, domains, g_ab, d_a) -> str:
    """The run's first log line: networks, images and their scales, schedule, device."""
    data, env = loader.dataset, run.env
    # "128×128", or "128×128 + 72×72" when --load-size-b sets B's scale apart
    sizes = " + ".join(dict.fromkeys(f"{x.shape[-2]}×{x.shape[-1]}" for x in (data.a, data.b)))
    if data.b_for_discriminator is not None:
        sizes += f" (D_B's real {domains[1]} {data.b_for_discriminator.shape[-1]} px)"
    return (f"CycleGAN {domains[0]} ↔ {domains[1]}: 2 × G {count_parameters(g_ab):,} / 2 × D "
            f"{count_parameters(d_a):,} parameters | {len(data.a)} + {len(data.b)} images "
            f"{sizes}, crops {config.crop_size} | {config.epochs} epochs × {len(loader)} steps"
            f"{f' × {env.world_size} ranks' if env.active else ''} | {run.device.type}, "
            f"{run.precision} | run {run.dir}")


def _record_epoch(run: Run, config: CycleGanConfig, row: dict, batches, nets: dict,
                  emas: dict, domains, log) -> str | None:
    """end_epoch with the run's choice of best.pt: the pair's worse direction (--choose pair),
    or each generator's own direction (--choose each; then, when best.pt changed, returns its
    choice in words)."""
    if config.choose == "pair":
        run.end_epoch(row, batches=batches, monitor=(
            ("val_fid_ratio", "min") if config.judge is not None else None))
        return None
    # Before end_epoch writes last.pt, so that a resumed run knows the choice so far; every
    # rank decides alike (the held-out row is rank 0's, broadcast).
    kept = run.extra.setdefault("each_best", {})
    improved = keep_each_best(kept, row, run.epochs_done + 1, nets, emas)
    run.end_epoch(row, batches=batches)
    if not improved:
        return None
    run.save_best(edit=lambda state: with_each_best(state, kept))
    names = {"generator_ab": f"{domains[0]} → {domains[1]}",
             "generator_ba": f"{domains[1]} → {domains[0]}"}
    chosen = ", ".join(f"{names[part]} from epoch {best['epoch']}" for part, best in kept.items())
    log(f"best.pt: {chosen}")
    return chosen


def kept_generators(kept: dict, shown: list[nn.Module]) -> list[nn.Module]:
    """Copies of the shown generators (G, F; averaged where the run averages) holding the
    weights --choose each kept for best.pt (a generator never kept, its direction NaN so far,
    stays as shown: best.pt holds this epoch's)."""
    copies = []
    for part, net in zip(("generator_ab", "generator_ba"), shown):
        best = kept.get(part)
        if best is not None:
            net = copy.deepcopy(net)
            net.load_state_dict(best["model"] if best["ema"] is None else best["ema"]["model"])
        copies.append(net)
    return copies


# --- figures and translation ---

def _draw_after_epoch(run: Run, chosen: str | None, shown: list[nn.Module], fixed: dict,
                      domains) -> None:
    """The loss curves so far and, when --choose each changed best.pt (`chosen`: the choice in
    words), translations_best.png: its pair, which no epoch's grid shows."""
    from cnnkit.viz.cyclegan import plot_cyclegan_losses  # noqa: PLC0415 (matplotlib)
    if chosen:
        _write_grid(run.dir / "translations_best.png", f"best.pt: {chosen}",
                    *kept_generators(run.extra["each_best"], shown), fixed, domains)
    plot_cyclegan_losses(run.dir / "metrics.csv", run.dir / "losses.png")


@torch.no_grad()
def cycle_images(g: nn.Module, f: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(N, 3, input | G(x) | F(G(x)), C, H, W): the rows of a translation grid."""
    translated = g(x)
    return torch.stack([x, translated, f(translated)], dim=1).float().cpu()


def _write_grid(path: Path, title: str, g_ab, g_ba, fixed: dict, domains) -> None:
    from cnnkit.viz.cyclegan import plot_translations  # noqa: PLC0415  (matplotlib)
    for net in (g_ab, g_ba):
        net.eval()
    rows = {"AtoB": cycle_images(g_ab, g_ba, fixed["a"]),
            "BtoA": cycle_images(g_ba, g_ab, fixed["b"])}
    plot_translations(rows, path, domains=domains, title=title)


def load_translator(checkpoint: str | Path, direction: str = "AtoB", *, device: str = "cpu"):
    """(generator for `direction` in eval mode on `device`, the checkpoint's domain names)."""
    from cnnkit.inference.load import load_model  # noqa: PLC0415
    if direction not in DIRECTIONS:
        raise CnnkitError(f"--direction must be AtoB or BtoA, got '{direction}'")
    part = "generator_ab" if direction == "AtoB" else "generator_ba"
    loaded = load_model(checkpoint, task="cyclegan", command="`cnnkit cyclegan translate`",
                        prefer="best", part=part)
    return loaded.model.to(device).eval(), loaded.classes


def translate_files(checkpoint: str | Path, images: list[str | Path], out_dir: str | Path, *,
                    direction: str = "AtoB", image_size: int | None = None,
                    device: str = "auto") -> list[Path]:
    """Translate each image file with the checkpoint's generator; write OUT_DIR/<stem>.png.

    Each image is translated at its own size, resized to the nearest multiple of 4 the generator
    needs (as the authors' test-time preprocessing); `image_size` resizes it to a square side.
    """
    from PIL import Image  # noqa: PLC0415
    stems = [Path(p).stem for p in images]
    twice = sorted({s for s in stems if stems.count(s) > 1})
    if twice:
        raise CnnkitError(f"two inputs are named {twice[0]}: their outputs would overwrite each "
                          f"other in {out_dir}")
    if image_size is not None and (image_size < 4 or image_size % 4):
        raise CnnkitError(f"--image-size must be a positive multiple of 4, got {image_size}")
    device = resolve_device(device)  # auto, cpu or cuda; a missing GPU is a one-line error
    generator, _ = load_translator(checkpoint, direction, device=device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path, stem in zip(images, stems):
        x = decode_image(path, channels=3).unsqueeze(0)  # (1, 3, H, W) uint8
        h, w = x.shape[-2:]
        size = (image_size, image_size) if image_size else (max(4, round(h / 4) * 4),
                                                            max(4, round(w / 4) * 4))
        x = to_unit_range(x)
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bicubic", align_corners=False).clamp_(-1, 1)
        with torch.inference_mode():
            y = generator(x.to(device))[0].float().cpu()  # (3, H', W') in [-1, 1]
        pixels = ((y + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0)
        target = out_dir / f"{stem}.png"
        with atomic_path(target) as tmp:
            Image.fromarray(pixels.numpy()).save(tmp, format="PNG")
        written.append(target)
    return written
