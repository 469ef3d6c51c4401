"""Judging a CycleGAN's translations with a domain classifier: success, judge-FID/KID, cycle L1.

The CycleGAN authors' code ships no evaluation; the paper (Zhu et al. 2017, §5.1,
https://arxiv.org/abs/1703.10593) judges Cityscapes labels → photos with a segmenter's scores
("FCN score", after Isola et al. 2017): a network trained on real data reads the generated
images. cnnkit does the same for any two domains with a two-class classifier trained on the
domains' real training images (`cnnkit train --dataset horse2zebra-domains`, or
`unpaired-domains --data-dir ROOT`), and reports per direction:

- success: the fraction of translated test images the judge assigns to the target domain;
- FID and KID (Heusel et al. 2017; Bińkowski et al. 2018; the distances of generation/fid.py)
  between the translated test images and the real target-domain test images, in the judge's
  feature space (its global-average-pooled `forward_features`), beside the floor: the same
  distances between real target-domain *training* images and those test images — for FID the
  median over the disjoint random samples of as many training images as there are translations
  (FID's bias depends on the sample size; in a two-class judge's heavy-tailed features one real
  sample's FID can sit ten times another's, so one sample is no floor, and the median is not
  pulled up by the few far ones as the mean is), for KID all of them at once (unbiased at any
  size). These are not Inception-FID and cannot be compared with published figures;
- cycle L1: mean |F(G(x)) − x| over the test images, in the generators' [-1, 1] units.

Every test image is resized whole (antialiased bilinear) to the side the CycleGAN trained its crops
at (as the training run's translation grids do), translated, rounded to uint8 like a written PNG,
and resized to the judge's input side; real images go straight to the judge's side. The judge sees
every image normalised with its own checkpoint's mean/std.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from cnnkit.data.array_dataset import resize_images
from cnnkit.data.unpaired import UnpairedDataset, to_unit_range
from cnnkit.engine.device import resolve_device
from cnnkit.generation.fid import frechet_distance, kid_from_features, statistics
from cnnkit.inference.load import LoadedModel, load_model
from cnnkit.utils import CnnkitError

COMMAND = "`cnnkit cyclegan eval`"
NOT_INCEPTION = ("FID and KID here are distances in the judge's own feature space, NOT "
                 "Inception-FID: they compare only with numbers from the same judge checkpoint "
                 "at the same n, never with published FID/KID figures.")


@dataclass
class DirectionJudgement:
    """One direction, source → target, of a CycleGAN judged on the test images."""
    direction: str  # "AtoB" (G) or "BtoA" (F)
    source: str  # domain names, as the checkpoint gives them
    target: str
    success: float  # fraction of translated source images the judge assigns to the target
    fid: float  # translated vs real target test images
    kid: float
    kid_se: float  # KID's standard error (fid.kid_from_features)
    kid_floor: float
    kid_floor_se: float
    cycle_l1: float  # mean |F(G(x)) − x| over the source test images, [-1, 1] units
    n: int  # translated images (the source's test images)
    n_real: int  # real target test images they are compared with
    n_floor: int  # real target training images in each floor sample (n where there are as many)
    fid_floors: tuple[float, ...]  # FID of each disjoint sample of n_floor real target training
    #                                images vs the same real target test images

    @property
    def fid_floor(self) -> float:
        """The floor: the median of the samples' FIDs (real_floor)."""
        return float(np.median(self.fid_floors))

    @property
    def floor_samples(self) -> int:
        return len(self.fid_floors)

    @property
    def fid_ratio(self) -> float:
        """FID / floor: 1 is as close as held-out real images; inf for a floor of 0."""
        return self.fid / self.fid_floor if self.fid_floor > 0 else float("inf")


@dataclass
class TranslationJudgement:
    """The judge's accuracy on real test images, and both directions' judgements."""
    judge_accuracy: float  # on the real test images of both domains together
    domain_accuracy: dict[str, float]  # per domain: its test images the judge assigns to it
    directions: dict[str, DirectionJudgement]
    image_size: int  # side the test images were translated at
    judge_image_size: int  # side the judge reads
    feature_dim: int  # length of the judge's pooled features
    judge: str = ""  # judge checkpoint file and architecture, for the report


# --- the judge ---

def load_judge(path: str | Path, domains: tuple[str, str] | list[str] | None = None
               ) -> LoadedModel:
    """A `cnnkit train` checkpoint as the judge; a one-line CnnkitError unless it is a two-class
    RGB classifier with forward_features / forward_head whose classes are `domains` (any order)."""
    judge = load_model(path, task="classify", command=f"{COMMAND} --judge")
    classes = list(judge.classes)
    if len(classes) != 2:
        raise CnnkitError(f"judge {judge.path} has {len(classes)} classes ({', '.join(classes[:5])}"
                          f"{', ...' if len(classes) > 5 else ''}); a CycleGAN's judge has two, "
                          f"one per domain: train it with `cnnkit train --dataset "
                          f"horse2zebra-domains` (or unpaired-domains --data-dir ROOT)")
    if not (hasattr(judge.model, "forward_features") and hasattr(judge.model, "forward_head")):
        raise CnnkitError(f"judge {judge.path} ({judge.name}) has no forward_features/"
                          f"forward_head to take features from; train another architecture")
    if judge.image_shape[0] != 3 or judge.image_shape[1] != judge.image_shape[2]:
        raise CnnkitError(f"judge {judge.path} reads {tuple(judge.image_shape)} images; the "
                          f"translations are square RGB: train it on the domains' photos")
    if domains is not None and sorted(classes) != sorted(domains):
        raise CnnkitError(f"judge {judge.path} knows classes {', '.join(classes)} but the "
                          f"CycleGAN's domains are {', '.join(domains)}; train the judge on the "
                          f"same two domains (horse2zebra-domains, or unpaired-domains "
                          f"--data-dir ROOT for a CycleGAN trained on --data-dir ROOT)")
    return judge


@torch.inference_mode()
def judge_images(judge: LoadedModel, images: torch.Tensor, *, device: torch.device | str = "cpu",
                 batch_size: int = 64) -> tuple[np.ndarray, torch.Tensor]:
    """(features float64 (N, D), predicted class int64 (N,)) of uint8 (N, 3, S, S) images at the
    judge's side S: features are forward_features global-average-pooled (the input of a ResNet's
    fc), the classes forward_head's argmax."""
    model = judge.model.to(device).eval()
    feats, preds = [], []
    for start in range(0, len(images), batch_size):
        x = judge.normalise(images[start:start + batch_size]).to(device)  # (b, 3, S, S)
        f = model.forward_features(x)
        logits = model.forward_head(f)
        pooled = f.mean((2, 3)) if f.dim() == 4 else f.flatten(1)  # (b, D)
        feats.append(pooled.double().cpu())
        preds.append(logits.argmax(1).cpu())
    return torch.cat(feats).numpy(), torch.cat(preds)


# --- translation ---

@torch.inference_mode()
def translate_and_cycle(g: nn.Module, f: nn.Module, images: torch.Tensor, image_size: int, *,
                        device: torch.device | str = "cpu", batch_size: int = 16
                        ) -> tuple[torch.Tensor, float]:
    """(G(x) as uint8 (N, 3, s, s), mean |F(G(x)) − x|) for uint8 images x resized whole to s.

    The cycle error is taken on the generators' float outputs in [-1, 1]; the translations are
    rounded to uint8, as `cnnkit cyclegan translate` writes them."""
    translated, total = [], 0.0
    for start in range(0, len(images), batch_size):
        x = to_unit_range(resize_images(images[start:start + batch_size], image_size)).to(device)
        y = g(x).float()  # (b, 3, s, s) in [-1, 1]
        total += (f(y).float() - x).abs().sum().item()
        translated.append(((y + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).cpu())
    out = torch.cat(translated)
    return out, total / max(out.numel(), 1)


def real_floor(judge: LoadedModel, train: torch.Tensor, reference: tuple, n: int, *,
               seed: int = 0, device: torch.device | str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """(the judge's features of all real training images `train` (uint8, at any side), the FID
    against `reference` — the real test images' (mean, covariance) — of each disjoint sample of n
    of them, the samples cut from one seeded random order). Random, not consecutive: files sorted
    by name come in runs of alike photos (horse2zebra's zebras: one run of 120 sat 30 times
    further from the test photos than another). With fewer than n images, one sample of all."""
    feats, _ = judge_images(judge, resize_images(train, judge.image_shape[-1]), device=device)
    order = torch.randperm(len(feats), generator=torch.Generator().manual_seed(seed)).numpy()
    chunk = min(n, len(feats))
    floors = [frechet_distance(*statistics(feats[order[i * chunk:(i + 1) * chunk]]), *reference)
              for i in range(max(1, len(feats) // n))]
    return feats, np.array(floors)


@dataclass(frozen=True)
class RealReference:
    """What one judge makes of the real photos — the same for any generators, so a training run
    that judges every epoch computes it once: per domain, the judge's (features, classes) of its
    test photos, their (mean, covariance), and its floor (real_floor: all training photos'
    features, each sample's FID)."""
    seen: dict[str, tuple[np.ndarray, torch.Tensor]]
    stats: dict[str, tuple[np.ndarray, np.ndarray]]
    floor: dict[str, tuple[np.ndarray, np.ndarray]]


def real_reference(judge: LoadedModel, test: UnpairedDataset, train: UnpairedDataset, *,
                   seed: int = 0, device: torch.device | str = "cpu") -> RealReference:
    """The judge's RealReference for these test and training photos (floor samples of as many
    photos as the other domain has test photos: one per translation)."""
    side = judge.image_shape[-1]
    seen = {d: judge_images(judge, resize_images(x, side), device=device)
            for d, x in (("A", test.a), ("B", test.b))}
    stats = {d: statistics(feats) for d, (feats, _) in seen.items()}
    floor = {tgt: real_floor(judge, getattr(train, tgt.lower()), stats[tgt],
                             len(getattr(test, src.lower())), seed=seed, device=device)
             for src, tgt in (("A", "B"), ("B", "A"))}
    return RealReference(seen, stats, floor)


def judge_generators(g_ab: nn.Module, g_ba: nn.Module, judges: Sequence[LoadedModel],
                     test: UnpairedDataset, train: UnpairedDataset, domains: tuple[str, str], *,
                     image_size: int, device: torch.device | str = "cpu", seed: int = 0,
                     references: dict | None = None) -> list[TranslationJudgement]:
    """Judge generators G: A → B and F: B → A on `test` (both domains' test images, uint8), once
    per judge; `train` holds the real training images the floors are drawn from (`real_floor`).
    The test images are translated once for all the judges. `references`: a dict kept between
    calls on the same test and training photos and seed (a run judging every epoch), in which
    each judge's RealReference is computed once, under the judge's path."""
    if image_size < 4 or image_size % 4:
        raise CnnkitError(f"--image-size must be a positive multiple of 4 (the generators halve "
                          f"it twice), got {image_size}")
    for split, ds in (("test", test), ("train", train)):
        small = min(len(ds.a), len(ds.b))
        if small < 3:  # KID's jackknife needs 3 per set
            raise CnnkitError(f"judging needs at least 3 {split} images per domain, got {small}")
    for judge in judges:
        if sorted(judge.classes) != sorted(domains):
            raise CnnkitError(f"the judge's classes {', '.join(judge.classes)} are not the "
                              f"domains {', '.join(domains)}")
    for net in (g_ab, g_ba):
        net.to(device).eval()
    real = {"A": test.a, "B": test.b}
    translated = {"AtoB": translate_and_cycle(g_ab, g_ba, real["A"], image_size, device=device),
                  "BtoA": translate_and_cycle(g_ba, g_ab, real["B"], image_size, device=device)}
    references = {} if references is None else references
    verdicts = []
    for judge in judges:
        key = str(judge.path)
        if key not in references:
            references[key] = real_reference(judge, test, train, seed=seed, device=device)
        verdicts.append(_judge_translated(judge, references[key], translated, real, domains,
                                          image_size=image_size, device=device, seed=seed))
    return verdicts


def _judge_translated(judge: LoadedModel, reference: RealReference, translated: dict,
                      real: dict, domains: tuple[str, str], *, image_size: int, device,
                      seed: int) -> TranslationJudgement:
    """One judge's verdict on the translations {direction: (uint8 images, cycle L1)}."""
    side = judge.image_shape[-1]
    index = {d: judge.classes.index(name) for d, name in zip("AB", domains)}
    seen = reference.seen  # the real test images: the judge's accuracy, each target's reference
    correct = {d: (seen[d][1] == index[d]).double() for d in "AB"}
    directions = {}
    for name, src, tgt in (("AtoB", "A", "B"), ("BtoA", "B", "A")):
        fake, cycle = translated[name]
        fake_feats, fake_preds = judge_images(judge, resize_images(fake, side), device=device)
        n = len(fake)
        floor_feats, floors = reference.floor[tgt]
        kid, kid_se = kid_from_features(fake_feats, seen[tgt][0], seed=seed)
        kid_floor, kid_floor_se = kid_from_features(floor_feats, seen[tgt][0], seed=seed)
        directions[name] = DirectionJudgement(
            name, domains["AB".index(src)], domains["AB".index(tgt)],
            success=float((fake_preds == index[tgt]).double().mean()),
            fid=frechet_distance(*statistics(fake_feats), *reference.stats[tgt]),
            kid=kid, kid_se=kid_se, kid_floor=kid_floor, kid_floor_se=kid_floor_se,
            cycle_l1=cycle, n=n, n_real=len(real[tgt]), n_floor=min(n, len(floor_feats)),
            fid_floors=tuple(float(f) for f in floors))
    return TranslationJudgement(
        judge_accuracy=float(torch.cat([correct["A"], correct["B"]]).mean()),
        domain_accuracy={domains[i]: float(correct[d].mean()) for i, d in enumerate("AB")},
        directions=directions, image_size=image_size, judge_image_size=side,
        feature_dim=int(seen["A"][0].shape[1]), judge=f"{judge.path} ({judge.name})")


def judge_translation(cyclegan_checkpoint: str | Path, judge_checkpoint: str | Path, *,
                      image_size: int | None = None, n: int | None = None,
                      data_dir: str | Path | None = None, device: str = "auto",
                      seed: int = 0) -> TranslationJudgement:
    """Judge a CycleGAN run (folder or .pt) with a judge classifier run (folder or .pt).

    image_size: side the test images are translated at (default: the run's --judge-size, else its
    training crop);
    n: only the first n test images of each domain (default: all); data_dir: where the CycleGAN's
    data set lives, when not where its run read it (its saved --data-dir).
    """
    return judge_translations(cyclegan_checkpoint, [judge_checkpoint], image_size=image_size,
                              n=n, data_dir=data_dir, device=device, seed=seed)[0]


def load_generators(cyclegan_checkpoint: str | Path, *, command: str = COMMAND
                    ) -> tuple[dict[str, LoadedModel], int]:
    """({"generator_ab": G, "generator_ba": F} of a CycleGAN run (its best.pt where it has one),
    the side it judged its held-out epochs at: its --judge-size, else its training crop)."""
    parts = {part: load_model(cyclegan_checkpoint, task="cyclegan", command=command,
                              prefer="best", part=part)
             for part in ("generator_ab", "generator_ba")}
    loaded = parts["generator_ab"]
    return parts, loaded.config.get("judge_size") or loaded.image_shape[-1]


def judge_translations(cyclegan_checkpoint: str | Path, judge_checkpoints: Sequence[str | Path],
                       *, image_size: int | None = None, n: int | None = None,
                       data_dir: str | Path | None = None, device: str = "auto",
                       seed: int = 0) -> list[TranslationJudgement]:
    """`judge_translation` by each of several judges (e.g. one recipe, other seeds): the
    generators and the domains' photos are loaded once, every judge is checked before any is
    run."""
    from cnnkit.train.cyclegan import CycleGanConfig, load_domains  # noqa: PLC0415 (the task)
    if n is not None and n < 3:
        raise CnnkitError(f"--n must be at least 3 images (KID's jackknife), got {n}")
    device = resolve_device(device)
    parts, judged_side = load_generators(cyclegan_checkpoint)
    loaded = parts["generator_ab"]
    domains = tuple(loaded.classes)
    judges = [load_judge(path, domains) for path in judge_checkpoints]
    saved = loaded.config
    config = CycleGanConfig(dataset=saved.get("dataset"), quiet=True,
                            data_dir=str(data_dir or saved.get("data_dir", "~/.cache/cnnkit")))
    test, _ = load_domains(config, "test", load_size=None, limit=n)
    train, _ = load_domains(config, "train", load_size=None)  # every floor sample
    side = image_size or judged_side
    return judge_generators(parts["generator_ab"].model, parts["generator_ba"].model, judges,
                            test, train, domains, image_size=side, device=device, seed=seed)


def format_judgement(result: TranslationJudgement) -> str:
    """The report `cnnkit cyclegan eval` prints: the judge, one row per direction, the caveat."""
    accuracy = ", ".join(f"{d} {a:.1%}" for d, a in result.domain_accuracy.items())
    total = sum(j.n_real for j in result.directions.values())
    lines = [f"judge {result.judge}: {result.judge_image_size}×{result.judge_image_size} input, "
             f"{result.feature_dim}-d pooled features | accuracy on {total} real test images "
             f"{result.judge_accuracy:.1%} ({accuracy})",
             f"test images resized whole to {result.image_size}×{result.image_size} (--image-size, "
             f"else the run's --judge-size, else its training crop), translated, rounded to "
             f"uint8",
             f"{'direction':<20} {'success':>8} {'FID':>9} {'floor':>9} {'FID/floor':>9} "
             f"{'KID ± se':>19} {'cycle L1':>9}  n (translated vs real; floor)"]
    for j in result.directions.values():
        lines.append(f"{j.source + ' → ' + j.target:<20} {j.success:>8.1%} {j.fid:>9.3f} "
                     f"{j.fid_floor:>9.3f} {j.fid_ratio:>9.2f} "
                     f"{f'{j.kid:.4f} ± {j.kid_se:.4f}':>19} {j.cycle_l1:>9.4f}  "
                     f"{j.n} vs {j.n_real}; {j.floor_samples} × {j.n_floor} train")
    lines.append("success: translated test images the judge assigns to the target domain; floor: "
                 "real target training images vs the same real test images (FID: the median over "
                 "disjoint random samples of as many as were translated; KID: all of them); "
                 "cycle L1: mean |F(G(x)) − x| in [-1, 1] units")
    lines.append("floor samples' FID [min – max], as a multiple of their median: " + "; ".join(
        f"{j.target} [{min(j.fid_floors):.3f} – {max(j.fid_floors):.3f}], "
        f"[{min(j.fid_floors) / j.fid_floor:.2f} – {max(j.fid_floors) / j.fid_floor:.2f}]×"
        for j in result.directions.values() if j.fid_floor > 0))
    lines.append(NOT_INCEPTION)
    return "\n".join(lines)


def summarise_judges(results: list[TranslationJudgement]) -> str:
    """Several judges (e.g. one recipe, other seeds) of the same generators, per direction: the
    mean, spread and range of the success and of FID / floor. One judge's FID / floor can move
    threefold with its seed alone (docs/benchmarks.md, CycleGAN), so a verdict should not rest
    on one."""
    lines = [f"over {len(results)} judges: mean ± standard deviation [min – max]"]
    for name, first in results[0].directions.items():
        rows = [r.directions[name] for r in results]
        cells = []
        for label, values, fmt in (("success", [100 * j.success for j in rows], "{:.1f}%"),
                                   ("FID/floor", [j.fid_ratio for j in rows], "{:.2f}")):
            values = np.array(values)
            spread = values.std(ddof=1) if len(values) > 1 else 0.0
            cells.append(f"{label} {fmt.format(values.mean())} ± {fmt.format(spread)} "
                         f"[{fmt.format(values.min())} – {fmt.format(values.max())}]")
        lines.append(f"{first.source + ' → ' + first.target:<20} " + "   ".join(cells))
    return "\n".join(lines)


__all__ = ["DirectionJudgement", "TranslationJudgement", "load_judge", "judge_images",
           "translate_and_cycle", "real_floor", "RealReference", "real_reference",
           "judge_generators", "judge_translation",
           "judge_translations", "format_judgement", "summarise_judges", "NOT_INCEPTION"]
