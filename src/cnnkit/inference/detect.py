"""Running a trained detector on whole images: torchvision's output format, kept on the CPU.

The detectors take a list of float images in 0..1 of any size and resize, normalise and pad
them inside (their `GeneralizedRCNNTransform`), so nothing here resizes. Masks come back as
probabilities at the image size (N, 1, H, W); they are binarised at 0.5 here (COCO's rule) and
kept as uint8, a quarter of the memory of float masks over a whole test set.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from cnnkit.engine.device import autocast


@torch.no_grad()
def detect(model: nn.Module, images: Sequence[torch.Tensor], *, precision: str = "fp32",
           batch_size: int = 4) -> list[dict[str, torch.Tensor]]:
    """Predictions for uint8 images (3, H, W): one dict per image (boxes, labels, scores, and
    masks (M, 1, H, W) uint8 0/1 / keypoints (M, J, 3) where the model predicts them)."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(images), batch_size):
        batch = [im.to(device).float() / 255 for im in images[start:start + batch_size]]
        with autocast(precision, device.type):
            predictions = model(batch)
        out += [_to_cpu(p) for p in predictions]
    return out


def _to_cpu(prediction: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    result = {}
    for key, value in prediction.items():
        value = value.cpu()
        if key == "masks":
            value = (value > 0.5).to(torch.uint8)  # (M, 1, H, W)
        elif value.is_floating_point():
            value = value.float()  # bf16 autocast leaves some outputs in bf16
        result[key] = value
    return result


def detect_files(loaded, paths: Sequence[str | Path], out_dir, *,
                 score_threshold: float = 0.5, save_json: str | Path | None = None,
                 save_txt: str | Path | None = None) -> list[tuple[Path, dict]]:
    """Detect objects in image files with a loaded detection checkpoint; write
    `<stem>_detections.png` per file into `out_dir`. Every file is decoded first, so a bad one
    stops the command before any output. Returns (figure path, prediction) per file.

    The detections scoring ≥ `score_threshold` also go, where asked, to `save_json` (COCO
    results: image_id = the file's 1-based position in `paths`, category_id from the run's
    categories) and to `save_txt`/<stem>.txt (YOLO: `class cx cy w h score` per line, the
    centre and size as fractions of the image, class = label - 1, the score as ultralytics'
    save_conf writes it)."""
    from cnnkit.data.imagefolder import decode_image  # noqa: PLC0415
    from cnnkit.viz.detection import draw_detections  # noqa: PLC0415
    from cnnkit.viz.segmentation import save_rgb  # noqa: PLC0415
    images = [decode_image(p, 3) for p in paths]  # (3, H, W) uint8 each
    out_dir = Path(out_dir)
    results = []
    for path, image, prediction in zip(paths, images, detect(loaded.model, images)):
        keep = prediction["scores"] >= score_threshold
        shown = {k: v[keep] for k, v in prediction.items()}
        drawn = draw_detections(image, shown["boxes"], shown["labels"], loaded.classes,
                                scores=shown["scores"], masks=shown.get("masks"),
                                keypoints=shown.get("keypoints"),
                                skeleton=loaded.spec.get("skeleton"), score_threshold=0.0)
        figure = out_dir / f"{Path(path).stem}_detections.png"
        save_rgb(drawn / 255.0, figure)  # drawn: uint8 (H, W, 3)
        results.append((figure, shown))
        if save_txt is not None:
            write_yolo_txt(Path(save_txt) / f"{Path(path).stem}.txt", shown, *image.shape[-2:])
    if save_json is not None:
        from cnnkit.train.coco_eval import predictions_to_coco, write_coco_json  # noqa: PLC0415
        write_coco_json(save_json, predictions_to_coco(
            [shown for _, shown in results], list(range(1, len(results) + 1)),
            loaded.spec.get("category_ids")))
    return results


def write_yolo_txt(path: str | Path, prediction: dict, height: int, width: int) -> Path:
    """One image's detections as YOLO txt lines `class cx cy w h score`, normalised by the
    image's width and height (det_formats.write_yolo's format plus ultralytics' score column);
    an empty file for an image without detections."""
    from cnnkit.utils import atomic_write_text  # noqa: PLC0415
    lines = []
    for (x1, y1, x2, y2), label, score in zip(prediction["boxes"].double().tolist(),
                                              prediction["labels"].tolist(),
                                              prediction["scores"].tolist()):
        lines.append(f"{label - 1} {(x1 + x2) / 2 / width:.6f} {(y1 + y2) / 2 / height:.6f} "
                     f"{(x2 - x1) / width:.6f} {(y2 - y1) / height:.6f} {score:.6f}\n")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(lines))
    return Path(path)


# torchvision builders that call overwrite_eps(model, 0.0) for their COCO_V1 weights.
LEGACY_EPS0 = ("fasterrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn", "keypointrcnn_resnet50_fpn",
               "retinanet_resnet50_fpn")


def load_reference_detector(path: str | Path, model_name: str):
    """A detector weight file that is a plain state_dict — torchvision's COCO checkpoints, e.g.
    `fasterrcnn_resnet50_fpn_coco-258fb6c6.pth` — loaded strictly into the registered cnnkit
    model of the same name; its labels are named with the 91 COCO categories torchvision uses."""
    from cnnkit.inference.load import LoadedModel  # noqa: PLC0415
    from cnnkit.models import create_model, get_model_cfg  # noqa: PLC0415
    from cnnkit.models.detection._utils import overwrite_eps  # noqa: PLC0415
    from cnnkit.train.coco_eval import COCO_CATEGORY_NAMES  # noqa: PLC0415
    from cnnkit.utils import CnnkitError  # noqa: PLC0415
    get_model_cfg(model_name)  # an unknown name: one line with the closest names
    path = Path(path)
    if not path.is_file():
        raise CnnkitError(f"{path}: no such weight file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (any unpickling failure: one line)
        raise CnnkitError(f"{path}: not a PyTorch weight file ({type(exc).__name__})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CnnkitError(f"{path}: not a plain state_dict; a cnnkit checkpoint needs no --model")
    # torchvision's COCO files come from FrozenBatchNorm2d backbones; the legacy ResNet-50 ones
    # (COCO_V1) were trained with its eps = 0, which torchvision restores when loading them.
    # (SSDlite's backbone keeps ordinary BatchNorm, as torchvision's does.)
    norm = {} if model_name.startswith("ssd") else {"backbone_norm": "frozen"}
    model = create_model(model_name, **norm)  # torchvision's defaults: 91 classes (keypoints: 2)
    if model_name in LEGACY_EPS0:
        overwrite_eps(model, 0.0)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise CnnkitError(f"{path}: weights do not fit '{model_name}': {first}") from None
    classes = list(COCO_CATEGORY_NAMES[1:])  # label l is COCO_CATEGORY_NAMES[l]
    if model_name.startswith("keypointrcnn"):
        classes = ["person"]
    spec = {"classes": classes, "category_ids": list(range(1, len(classes) + 1))}
    if model_name.startswith("keypointrcnn"):
        from cnnkit.train.coco_eval import COCO_PERSON_SKELETON  # noqa: PLC0415
        spec["skeleton"] = [list(p) for p in COCO_PERSON_SKELETON]
    return LoadedModel(model.eval(), "detect", model_name, classes, (0.0,) * 3, (1.0,) * 3,
                       (3, 0, 0), {}, spec, path)
