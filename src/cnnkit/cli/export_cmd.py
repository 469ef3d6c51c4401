"""`cnnkit export CHECKPOINT --format onnx|torchscript`: a deployable file, checked against
PyTorch on real test images, carrying its preprocessing and class names as metadata. A YOLOv8
checkpoint exports its raw forward (boxes and scores before NMS, which stays outside the graph)."""
from pathlib import Path

FORMATS = ("onnx", "torchscript")  # inference.export.FORMATS, imported only when the command runs
RANDOM_CHECK_IMAGES = 8
RUNTIMES = {"onnx": "onnxruntime", "torchscript": "torch.jit.load"}
METADATA_HOME = {"onnx": "ONNX metadata_props", "torchscript": "the archive's cnnkit.json"}


def add_arguments(parser) -> None:
    parser.add_argument("checkpoint", help="a checkpoint file or a run folder (its best.pt, else "
                                           "last.pt)")
    parser.add_argument("--format", choices=FORMATS, default="onnx")
    parser.add_argument("-o", "--output", type=Path,
                        help="output file (default: beside the checkpoint, "
                             "best.onnx / best.torchscript.pt)")
    parser.add_argument("--check-images", type=int, default=64,
                        help="test images the exported model is checked on")
    parser.add_argument("--with-preprocessing", action="store_true",
                        help="bake the normalisation into the graph: the file takes uint8 pixels "
                             "(N, C, H, W) as decoded, instead of (x/255 − mean)/std floats")


def run(args) -> int:
    import torch  # noqa: PLC0415  (torch and the exporters: not for --help)

    from cnnkit import __version__  # noqa: PLC0415
    from cnnkit.inference.export import (SUFFIXES, TOLERANCE, WithPreprocessing,  # noqa: PLC0415
                                         export_metadata, export_model)
    from cnnkit.inference.load import load_model  # noqa: PLC0415
    from cnnkit.inference.modes import checkpoint_test_images  # noqa: PLC0415

    loaded = load_model(args.checkpoint, task=("classify", "segment", "detect"),
                        command="`cnnkit export`")
    out = args.output or loaded.path.parent / (loaded.path.stem + SUFFIXES[args.format])
    if loaded.task == "detect":
        return _detector(args, loaded, out)
    found = checkpoint_test_images(loaded, args.check_images)
    if found is None:
        # The data set is not on disk: random inputs still catch a wrong graph.
        generator = torch.Generator().manual_seed(0)
        images = torch.randn(RANDOM_CHECK_IMAGES, *loaded.image_shape, generator=generator)
        what = f"{len(images)} random images (the data set could not be read without a download)"
    else:
        images, what = found
    model = loaded.model
    if args.with_preprocessing:
        model = WithPreprocessing(model, loaded.mean, loaded.std).eval()
        # Back to the pixels the test images were decoded as: (x·std + mean)·255 is within
        # float rounding of an integer, so round() recovers them exactly.
        mean = torch.tensor(loaded.mean).view(1, -1, 1, 1)
        std = torch.tensor(loaded.std).view(1, -1, 1, 1)
        images = ((images * std + mean) * 255).round().clamp(0, 255).to(torch.uint8)
    output = loaded.output
    metadata = export_metadata(name=loaded.name, task=loaded.task, classes=loaded.classes,
                               image_shape=loaded.image_shape, mean=loaded.mean, std=loaded.std,
                               output=output, with_preprocessing=args.with_preprocessing,
                               version=__version__)
    report = export_model(model, out, args.format, images, metadata=metadata,
                          output_name="log_probs" if output == "log_probs" else "logits")
    size_mb = report.path.stat().st_size / 2**20
    print(f"wrote {report.path} ({args.format}, {report.exporter}, {size_mb:.1f} MiB)")
    sizes = " and ".join(map(str, report.batch_sizes))
    print(f"check: max |{RUNTIMES[args.format]} − PyTorch| = {report.max_abs_diff:.2e} on {what}, "
          f"batch sizes {sizes} (tolerance {TOLERANCE:g})")
    takes = ("uint8 pixels (normalisation in the graph)" if args.with_preprocessing
             else f"(x/255 − mean)/std, mean {loaded.mean}, std {loaded.std}")
    print(f"input: {takes}; output: {output} "
          f"({'exp' if output == 'log_probs' else 'softmax'} gives probabilities); classes, "
          f"input size and mean/std are in {METADATA_HOME[args.format]}")
    return 0


def _detector(args, loaded, out) -> int:
    """The raw forward of a YOLOv8 checkpoint (R-CNN-style detectors have none)."""
    import torch  # noqa: PLC0415

    from cnnkit import __version__  # noqa: PLC0415
    from cnnkit.inference.export import (TOLERANCE, detector_metadata,  # noqa: PLC0415
                                         export_detector)
    from cnnkit.inference.modes import detector_test_images  # noqa: PLC0415
    from cnnkit.utils import CnnkitError  # noqa: PLC0415

    model = loaded.model
    if not hasattr(model, "forward_raw"):
        raise CnnkitError(f"`cnnkit export` of {loaded.name} is not supported: only detectors "
                          f"with a raw forward before NMS (YOLOv8) export, not R-CNN-style ones")
    size = model.img_size
    found = detector_test_images(loaded, args.check_images, size)
    if found is None:
        generator = torch.Generator().manual_seed(0)
        images = torch.rand(RANDOM_CHECK_IMAGES, 3, size, size, generator=generator)
        what = f"{len(images)} random images (the data set could not be read without a download)"
    else:
        images, what = found
    metadata = detector_metadata(name=loaded.name, classes=loaded.classes, img_size=size,
                                 score_thresh=model.score_thresh, nms_thresh=model.nms_thresh,
                                 with_preprocessing=args.with_preprocessing, version=__version__)
    report = export_detector(model, out, args.format, images, metadata=metadata,
                             with_preprocessing=args.with_preprocessing)
    size_mb = report.path.stat().st_size / 2**20
    print(f"wrote {report.path} ({args.format}, {report.exporter}, {size_mb:.1f} MiB)")
    print(f"check on {what}, batch sizes {' and '.join(map(str, report.batch_sizes))}: raw "
          f"max |{RUNTIMES[args.format]} − PyTorch| = {report.max_box_diff:.2e} px (boxes), "
          f"{report.max_score_diff:.2e} (scores) (tolerance {TOLERANCE:g} of {size} px / of a "
          f"score); after the same NMS: the same {report.detections} detections, largest gap "
          f"{report.max_detection_diff:.2e}")
    takes = ("uint8 pixels (N, 3, S, S)" if args.with_preprocessing
             else "float pixels/255 (N, 3, S, S)")
    print(f"input: {takes}, S = {size}, letterboxed (grey 114 padding); outputs: boxes (N, A, 4) "
          f"xyxy px, scores (N, A, {len(loaded.classes)}); NMS is not in the graph: keep scores "
          f"> {model.score_thresh:g}, per-class NMS at IoU {model.nms_thresh:g}; metadata in "
          f"{METADATA_HOME[args.format]}")
    return 0
