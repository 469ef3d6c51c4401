"""Segmenting whole images with a trained dense model, whatever their size.

Valid-convolution U-Nets segment tile by tile with mirrored context (the paper's overlap-tile
strategy, `models.unet_seg.overlap_tile_predict`); other networks run on the image padded by
reflection to a multiple of 32 (every pooling level then sees an even size), cropped back after.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cnnkit.engine.device import autocast

TILE = 388  # the paper's output tile: large tiles amortise the 92-px mirrored margin


def segment_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits (B, K, H, W) of normalised images (B, C, H, W) of any size."""
    if getattr(model, "padding", None) == "valid":
        from cnnkit.models.unet_seg import overlap_tile_predict  # noqa: PLC0415
        return overlap_tile_predict(model, x, tile=min(TILE, *x.shape[-2:]))
    height, width = x.shape[-2:]
    pad_h, pad_w = -height % 32, -width % 32
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect")  # (B, C, H + pad_h, W + pad_w)
    return model(x)[..., :height, :width]


def predict_masks(model: nn.Module, images: torch.Tensor, mean: Sequence[float],
                  std: Sequence[float], *, precision: str = "fp32",
                  batch_size: int = 4) -> torch.Tensor:
    """Class index per pixel of uint8 images (N, C, H, W), int64 (N, H, W), in batches."""
    return torch.cat([logits.argmax(1) for logits in _logit_batches(
        model, images, mean, std, precision=precision, batch_size=batch_size)])


def predict_probabilities(model: nn.Module, images: torch.Tensor, mean: Sequence[float],
                          std: Sequence[float], *, precision: str = "fp32",
                          batch_size: int = 4) -> torch.Tensor:
    """Softmax class probabilities (N, K, H, W) float32 of uint8 images (N, C, H, W)."""
    return torch.cat([logits.softmax(1) for logits in _logit_batches(
        model, images, mean, std, precision=precision, batch_size=batch_size)])


@torch.no_grad()
def _logit_batches(model, images, mean, std, *, precision: str, batch_size: int):
    """float32 CPU logits (B, K, H, W), batch by batch (argmax per batch keeps memory small)."""
    model.eval()
    device = next(model.parameters()).device
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    for start in range(0, len(images), batch_size):
        x = (images[start:start + batch_size].float() / 255 - mean_t) / std_t  # (B, C, H, W)
        with autocast(precision, device.type):
            logits = segment_logits(model, x.to(device))
        yield logits.float().cpu()


def write_mask(mask: torch.Tensor, path) -> None:
    """An index PNG (mode L: the pixel value is the class), written atomically."""
    from PIL import Image  # noqa: PLC0415
    from cnnkit.utils import atomic_path  # noqa: PLC0415
    with atomic_path(path) as tmp:
        Image.fromarray(mask.to(torch.uint8).numpy(), mode="L").save(tmp, format="PNG")


def write_cells(cells, path) -> None:
    """An instance labeling as a 16-bit PNG (pixel value: the cell; 0: membrane), atomically."""
    import numpy as np  # noqa: PLC0415
    from PIL import Image  # noqa: PLC0415
    from cnnkit.utils import CnnkitError, atomic_path  # noqa: PLC0415
    if cells.max() > np.iinfo(np.uint16).max:
        raise CnnkitError(f"{path}: {cells.max()} cells do not fit a 16-bit PNG")
    with atomic_path(path) as tmp:
        Image.fromarray(cells.astype(np.uint16)).save(tmp, format="PNG")


def segment_files(loaded, paths, out_dir, *, cells: bool = False) -> list[tuple]:
    """Segment image files of any size with a loaded segmentation checkpoint; write
    `<stem>_mask.png` (class index per pixel) and `<stem>_overlay.png` into `out_dir`, and with
    `cells` (two-class models: class 1 the cells) `<stem>_cells.png`, the seeded watershed's
    instance labeling (`train.seg_metrics.watershed_cells`).
    Every file is decoded first, so a bad one stops the command before any output.
    Returns (mask path, overlay path, per-class pixel fractions, cells path or None) per file."""
    from pathlib import Path  # noqa: PLC0415

    from cnnkit.data.imagefolder import decode_image  # noqa: PLC0415
    from cnnkit.train.seg_metrics import watershed_cells  # noqa: PLC0415
    from cnnkit.utils import CnnkitError  # noqa: PLC0415
    from cnnkit.viz.segmentation import overlay, save_rgb  # noqa: PLC0415
    if cells and len(loaded.classes) != 2:
        raise CnnkitError(f"--cells needs a two-class (membrane, cell) model; {loaded.path} has "
                          f"{len(loaded.classes)} classes")
    images = [decode_image(p, loaded.image_shape[0]) for p in paths]  # (C, H, W) uint8 each
    out_dir = Path(out_dir)
    results = []
    for path, image in zip(paths, images):
        probability = predict_probabilities(loaded.model, image[None], loaded.mean,
                                            loaded.std)[0]  # (K, H, W)
        mask = probability.argmax(0)  # (H, W)
        stem = Path(path).stem
        mask_path, overlay_path = out_dir / f"{stem}_mask.png", out_dir / f"{stem}_overlay.png"
        write_mask(mask, mask_path)
        save_rgb(overlay(image, mask, len(loaded.classes)), overlay_path)
        cells_path = out_dir / f"{stem}_cells.png" if cells else None
        if cells:
            write_cells(watershed_cells(probability[1]), cells_path)
        fractions = torch.bincount(mask.flatten(), minlength=len(loaded.classes)) / mask.numel()
        results.append((mask_path, overlay_path, fractions, cells_path))
    return results


def evaluate_dataset(loaded, dataset: str, split: str, data_dir):
    """(SegmentationScores, ISBI challenge scores or None, image count) of a loaded
    segmentation checkpoint on a registered data set's split, whole images."""
    from cnnkit.data import load_dataset  # noqa: PLC0415
    from cnnkit.train.seg_metrics import SegmentationScores  # noqa: PLC0415
    from cnnkit.utils import CnnkitError  # noqa: PLC0415
    data = load_dataset(dataset, split, data_dir=data_dir,
                        image_size=loaded.config.get("image_size"), quiet=True)
    if len(data.classes) != len(loaded.classes):
        raise CnnkitError(f"{loaded.path} predicts {len(loaded.classes)} classes but {dataset} "
                          f"has {len(data.classes)}")
    predictions, challenge, _ = predict_and_challenge(loaded.model, data, dataset, loaded.mean,
                                                      loaded.std)
    scores = SegmentationScores(len(data.classes), ignore_index=data.ignore_index)
    scores.update(predictions, data.masks)
    return scores, challenge, len(data)


def predict_and_challenge(model: nn.Module, data, dataset: str, mean: Sequence[float],
                          std: Sequence[float], *, precision: str = "fp32"
                          ) -> tuple[torch.Tensor, dict | None, torch.Tensor | None]:
    """Class-index masks (N, H, W) of a data set's whole images and, for ISBI 2012 (cells:
    class 1), the challenge's scores of the cell probabilities (`isbi_challenge_scores`) and
    those probabilities (N, H, W); else None and None."""
    if dataset != "isbi2012" or len(data.classes) != 2:
        return predict_masks(model, data.images, mean, std, precision=precision), None, None
    from cnnkit.train.seg_metrics import isbi_challenge_scores  # noqa: PLC0415
    probabilities = predict_probabilities(model, data.images, mean, std,
                                          precision=precision)  # (N, 2, H, W)
    return (probabilities.argmax(1), isbi_challenge_scores(probabilities[:, 1], data.masks),
            probabilities[:, 1])
