"""How far real photos, lightly degraded, sit from the floor in a domain judge's space (issue 15).

CycleGAN's FID target is "within 3× of the floor", the floor being n real training images of the
target domain against its real test images, in the judge's pooled features (generation/judge.py).
This calibrates that scale with no generator at all: n real training photos of each domain,
drawn at random (never part of the floor, the median over the other training photos' disjoint
random samples of n), unchanged and then degraded in ways a 64-px generator's output
typically is — blurred, resampled from a lower resolution, JPEG-compressed, noisy, colour-shifted —
each at the judge's input side, are scored as if they were translations: FID / floor and the
judge's success, for every judge given. A degradation the eye barely sees that already lands
above 3× says how strict the target is.

usage: python benchmarks/judge_sensitivity.py --judge RUN [RUN ...] [--n 120] [--seed 0]
"""
from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from _timing import cpu_name
from cnnkit.data.array_dataset import resize_images
from cnnkit.generation.fid import frechet_distance, statistics
from cnnkit.generation.judge import judge_images, load_judge, real_floor
from cnnkit.ops.filters import gaussian_blur
from cnnkit.train.cyclegan import CycleGanConfig, load_domains

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """uint8 (N, 3, S, S) through a Gaussian of `sigma` pixels, reflect-padded."""
    x = gaussian_blur(images.float(), sigma, padding="reflect")
    return x.round().clamp(0, 255).to(torch.uint8)


def from_lower_resolution(images: torch.Tensor, factor: float) -> torch.Tensor:
    """Down to side/`factor` (antialiased) and back up, bilinear: detail above the new Nyquist
    limit is gone."""
    side = images.shape[-1]
    return resize_images(resize_images(images, round(side / factor)), side)


def jpeg(images: torch.Tensor, quality: int) -> torch.Tensor:
    out = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, "JPEG", quality=quality)
        out.append(torch.from_numpy(np.array(Image.open(buffer))).permute(2, 0, 1))
    return torch.stack(out)


def noise(images: torch.Tensor, std: float, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    x = images.float() + std * torch.randn(images.shape, generator=generator)
    return x.round().clamp(0, 255).to(torch.uint8)


def scale_contrast(images: torch.Tensor, factor: float) -> torch.Tensor:
    """Contrast about each image's mean grey, as a generator that under- or overshoots does."""
    x = images.float()
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (mean + factor * (x - mean)).round().clamp(0, 255).to(torch.uint8)


DEGRADATIONS = {
    "unchanged (other real photos)": lambda x: x,
    "Gaussian blur σ 0.5 px": lambda x: blur(x, 0.5),
    "Gaussian blur σ 1 px": lambda x: blur(x, 1.0),
    "from 3/4 resolution": lambda x: from_lower_resolution(x, 4 / 3),
    "from 1/2 resolution": lambda x: from_lower_resolution(x, 2),
    "JPEG quality 75": lambda x: jpeg(x, 75),
    "JPEG quality 30": lambda x: jpeg(x, 30),
    "noise σ 4 / 255": lambda x: noise(x, 4),
    "noise σ 10 / 255": lambda x: noise(x, 10),
    "contrast × 0.8": lambda x: scale_contrast(x, 0.8),
    "contrast × 1.2": lambda x: scale_contrast(x, 1.2),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--judge", nargs="+", required=True, help="judge runs or .pt files")
    parser.add_argument("--n", type=int, default=120, help="images per set (the floor's n)")
    parser.add_argument("--data-dir", type=Path, default=DATASETS)
    parser.add_argument("--seed", type=int, default=0, help="draws the scored photos and the "
                        "floor samples")
    args = parser.parse_args()
    start = time.perf_counter()
    config = CycleGanConfig(dataset="horse2zebra", data_dir=str(args.data_dir), quiet=True)
    train, domains = load_domains(config, "train", load_size=None)
    test, _ = load_domains(config, "test", load_size=None)
    print(f"{cpu_name()} | n = {args.n}: scored = {args.n} training photos drawn at random "
          f"(seed {args.seed}); floor = the median FID of the disjoint random samples of {args.n} "
          f"of the other training photos (generation/judge.real_floor); reference = all test "
          f"photos of the domain")
    rows = {name: [] for name in DEGRADATIONS}
    for path in args.judge:
        judge = load_judge(path, domains)
        side = judge.image_shape[-1]
        for domain, real_train, real_test in zip(domains, (train.a, train.b), (test.a, test.b)):
            target = judge.classes.index(domain)
            reference = statistics(judge_images(judge, resize_images(real_test, side))[0])
            order = torch.randperm(len(real_train), generator=torch.Generator().manual_seed(
                args.seed))
            _, floors = real_floor(judge, real_train[order[args.n:]], reference, args.n,
                                   seed=args.seed)
            floor = float(np.median(floors))
            print(f"{Path(path).name} {domain}: {len(floors)} floor samples, FID {floor:.3f}, "
                  f"each within [{floors.min() / floor:.2f} – {floors.max() / floor:.2f}]× of it")
            scored = resize_images(real_train[order[:args.n]], side)  # what the judge reads
            for name, degrade in DEGRADATIONS.items():
                feats, preds = judge_images(judge, degrade(scored))
                ratio = frechet_distance(*statistics(feats), *reference) / floor
                success = float((preds == target).double().mean())
                rows[name].append((domain, Path(path).name, ratio, success))
    print(f"\n{'photos of the target domain':<32} {'domain':<7} FID / floor per judge "
          f"(judge success)")
    for name, results in rows.items():
        for domain in domains:
            cells = [f"{r:6.2f} ({s:.0%})" for d, _, r, s in results if d == domain]
            print(f"{name:<32} {domain:<7} {'  '.join(cells)}")
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
