"""Per-image cost of the two pose read-outs on LSP test photos (issue 14):

- top-down: HRNet heatmaps → joints (flip test, quarter-pixel decoding, back to the image);
- bottom-up: OpenPose maps and fields → people (upsampling, peaks, limb integrals, matching).

Each is timed apart from the network's forward pass, which is timed too. Usage:

    python benchmarks/pose_timing.py RUN_HRNET RUN_OPENPOSE [--images 100] [--threads 2]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from cnnkit.data.lsp import load_lsp
from cnnkit.data.pose_loader import bottom_up_box, bottom_up_size
from cnnkit.inference.load import load_model
from cnnkit.inference.pose import UPSAMPLE, normalise_crops
from cnnkit.ops.heatmaps import crop_matrix, decode_heatmaps, flip_back, heatmap_to_image, warp_crop
from cnnkit.ops.paf import parse_people

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "lsp"


def _ms(seconds: list[float]) -> str:
    seconds = sorted(seconds)
    return f"median {1000 * seconds[len(seconds) // 2]:.2f} ms"


@torch.inference_mode()
def top_down(run: Path, ds, n: int) -> None:
    loaded = load_model(run, task="pose")
    size = tuple(loaded.spec["image_shape"][1:])
    forward, decode = [], []
    for i in range(n):
        crop = warp_crop(ds.images[i], crop_matrix(ds.boxes[i].tolist(), size), size)[None]
        x = normalise_crops(crop)
        start = time.perf_counter()
        heatmaps = loaded.model(x)
        flipped = loaded.model(x.flip(-1))
        middle = time.perf_counter()
        averaged = (heatmaps + flip_back(flipped, loaded.spec["flip_index"])) / 2
        coords, _ = decode_heatmaps(averaged)
        heatmap_to_image(coords, ds.boxes[i:i + 1], tuple(heatmaps.shape[-2:]), size)
        decode.append(time.perf_counter() - middle)
        forward.append(middle - start)
    print(f"top-down {loaded.name} {size[0]}×{size[1]}, batch 1: forward ×2 (flip test) "
          f"{_ms(forward)}; heatmap decoding {_ms(decode)} per person")


@torch.inference_mode()
def bottom_up(run: Path, ds, n: int) -> None:
    loaded = load_model(run, task="pose")
    scale, limbs = loaded.spec["scale"], [tuple(limb) for limb in loaded.spec["skeleton"]]
    forward, parse, people = [], [], 0
    for i in range(n):
        image = ds.images[i]
        size = bottom_up_size(*image.shape[-2:], scale)
        box = bottom_up_box(*image.shape[-2:], scale, size)
        x = normalise_crops(warp_crop(image, crop_matrix(box, size), size)[None])
        start = time.perf_counter()
        fields, maps = loaded.model(x)
        middle = time.perf_counter()
        both = torch.cat([maps[-1, 0], fields[-1, 0]])[None]
        big = F.interpolate(both, scale_factor=UPSAMPLE, mode="bicubic", align_corners=False)[0]
        people += len(parse_people(big[:maps.shape[2]], big[maps.shape[2]:], limbs))
        parse.append(time.perf_counter() - middle)
        forward.append(middle - start)
    print(f"bottom-up {loaded.name}, whole photo ×{scale}, batch 1: forward {_ms(forward)}; "
          f"parsing (×{UPSAMPLE} upsampling included) {_ms(parse)} per image "
          f"({people / n:.2f} people found per image)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("hrnet_run", type=Path)
    parser.add_argument("openpose_run", type=Path)
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ds = load_lsp(DATA, "test")
    print(f"{args.images} LSP test photos, {args.threads} threads, fp32")
    top_down(args.hrnet_run, ds, args.images)
    bottom_up(args.openpose_run, ds, args.images)


if __name__ == "__main__":
    main()
