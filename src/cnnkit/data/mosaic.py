"""YOLO's mosaic with random scale/translate (HSV jitter: det_augment.hsv_jitter); boxes move.

Mosaic (Bochkovskiy et al. 2020, YOLOv4 §3.3; ultralytics `data/augment.py: Mosaic,
RandomPerspective, RandomHSV`): four training images, each resized so its longer side is `size`,
meet at a random centre of a 2·size canvas filled with grey 114; a random scale g and
translation then cut a size × size view out of it. The detector sees objects of four images at
new scales and positions, cut off at borders, in one sample — the reason small data sets can be
trained from scratch at all. The view is a crop of the canvas resized by g, i.e. ultralytics'
affine without rotation and shear (their defaults are 0 for both).

Everything here reuses det_augment's crop/resize, so masks and keypoints move too, and objects
cut to slivers are dropped by the same rule.
"""
from __future__ import annotations

import torch

from cnnkit.data.det_augment import _PER_OBJECT, crop, resize

FILL = 114  # ultralytics' grey padding


def _letterbox_scale(image: torch.Tensor, target: dict, size: int) -> tuple[torch.Tensor, dict]:
    """Resize so that the longer side is `size`, keeping the aspect ratio."""
    h, w = image.shape[-2:]
    r = size / max(h, w)
    return resize(image, target, (max(1, round(h * r)), max(1, round(w * r))))


def _paste(canvas: torch.Tensor, image: torch.Tensor, target: dict, top: int, left: int) -> dict:
    """Write `image` into `canvas` at (top, left); its target in canvas coordinates."""
    h, w = image.shape[-2:]
    canvas[:, top:top + h, left:left + w] = image
    out = dict(target)
    out["boxes"] = target["boxes"] + torch.tensor([left, top, left, top], dtype=torch.float32)
    if "masks" in target:
        masks = target["masks"].new_zeros((len(target["masks"]), *canvas.shape[-2:]))
        masks[:, top:top + h, left:left + w] = target["masks"]
        out["masks"] = masks
    if "keypoints" in target:
        kp = target["keypoints"].clone()
        labelled = kp[..., 2] > 0
        kp[..., 0] += left * labelled
        kp[..., 1] += top * labelled
        out["keypoints"] = kp
    return out


def _merge(targets: list[dict]) -> dict:
    """One target holding every object of `targets` (the first one's image-level keys)."""
    out = dict(targets[0])
    for key in _PER_OBJECT:
        if key in out:
            out[key] = torch.cat([t[key] for t in targets])
    return out


class Mosaic:
    """Four samples → one `size` × `size` uint8 image and the merged target.

    scale: the view's zoom g is drawn from [1 - scale, 1 + scale]; translate: its centre moves by
    up to ± translate · size (ultralytics' defaults 0.5 and 0.1).
    """

    def __init__(self, size: int, *, scale: float = 0.5, translate: float = 0.1):
        if size < 32 or not 0 <= scale < 1 or not 0 <= translate < 0.5:
            raise ValueError(f"mosaic needs size ≥ 32, scale in [0, 1), translate in [0, 0.5); "
                             f"got {size}, {scale}, {translate}")
        self.size, self.scale, self.translate = size, scale, translate

    def __call__(self, images: list[torch.Tensor], targets: list[dict], index: int,
                 generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        """The mosaic of sample `index` and three others drawn with `generator`."""
        s = self.size
        picks = [index] + torch.randint(len(images), (3,), generator=generator).tolist()
        u = torch.rand(5, generator=generator).tolist()
        xc, yc = int(s * (0.5 + u[0])), int(s * (0.5 + u[1]))  # the meeting point, in [s/2, 3s/2)
        canvas = torch.full((3, 2 * s, 2 * s), FILL, dtype=torch.uint8)
        placed = []
        for quadrant, i in enumerate(picks):
            image, target = _letterbox_scale(images[i], targets[i], s)
            h, w = image.shape[-2:]
            # The part of the image that fits on its side of the centre: top-left, top-right,
            # bottom-left, bottom-right — each touches (xc, yc) with one of its corners.
            right, below = quadrant in (1, 3), quadrant in (2, 3)
            x0 = xc if right else max(xc - w, 0)
            y0 = yc if below else max(yc - h, 0)
            x1 = min(xc + w, 2 * s) if right else xc
            y1 = min(yc + h, 2 * s) if below else yc
            src_left = 0 if right else w - (x1 - x0)
            src_top = 0 if below else h - (y1 - y0)
            image, target = crop(image, target, src_top, src_left, y1 - y0, x1 - x0)
            placed.append(_paste(canvas, image, target, y0, x0))
        target = _merge(placed)
        # The view: a square of side s/g around the canvas centre, shifted by the translation,
        # then resized to s; where it reaches past the canvas, grey fill.
        g = 1 - self.scale + 2 * self.scale * u[2]
        side = round(s / g)
        left = round(s - side / 2 - (2 * u[3] - 1) * self.translate * s / g)
        top = round(s - side / 2 - (2 * u[4] - 1) * self.translate * s / g)
        x0, y0 = max(left, 0), max(top, 0)
        x1, y1 = min(left + side, 2 * s), min(top + side, 2 * s)
        image, target = crop(canvas, target, y0, x0, y1 - y0, x1 - x0)
        view = torch.full((3, side, side), FILL, dtype=torch.uint8)
        target = _paste(view, image, target, y0 - top, x0 - left)
        image, target = resize(view, target, (s, s))
        target["boxes"] = target["boxes"].clamp(0, s)  # float rounding of the rescale
        return image, target
