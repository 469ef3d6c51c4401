"""`cnnkit benchmark --model NAME`: images/s of each CPU inference mode, and its top-1 agreement
with eager fp32 on real images. A YOLOv8 detector (`--model yolov8n`, or a detect checkpoint) is
timed on its raw forward (boxes and scores before NMS) at its img_size, at batch 1 and at
--batch-size, and compared with fp32 by its largest score gap."""
from pathlib import Path

import torch

from cnnkit.cli._args import parse_kv
from cnnkit.inference.load import LoadedModel, load_model
from cnnkit.inference.modes import (MODES, DenseDetections, agreement, checkpoint_test_images,
                                    compare_modes, detector_test_images, format_table,
                                    photo_images)
from cnnkit.models import count_parameters, create_model, get_model_cfg
from cnnkit.utils import CnnkitError


def add_arguments(parser) -> None:
    parser.add_argument("--model", help="registered model name (random weights)")
    parser.add_argument("--checkpoint", help="a trained checkpoint or run folder instead of "
                                             "--model: agreement is then checked on its test set")
    parser.add_argument("--model-args", type=parse_kv, default={}, metavar="K=V,...",
                        help="builder keywords for --model, e.g. small_input=true,num_classes=10")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--input-size", type=int, nargs=3, metavar=("C", "H", "W"),
                        help="input shape (default: the checkpoint's, else the model's)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--iters", type=int, default=9,
                        help="timed passes per mode, spread over --rounds alternating rounds")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2, help="untimed passes per mode")
    parser.add_argument("--images", type=int, default=64,
                        help="real images for the top-1 agreement check (0: skip it)")
    parser.add_argument("--photos", type=Path, default=None,
                        help="zip or folder of photos for the agreement check of --model "
                             "(e.g. a zip of the CIFAR-10 test JPEGs); without it --model runs "
                             "are timed only")


def _build(args) -> tuple[torch.nn.Module, str, tuple[int, int, int], LoadedModel | None]:
    """(model, its name, input size (C, H, W), the loaded checkpoint or None)."""
    if args.checkpoint:
        loaded = load_model(args.checkpoint, task=("classify", "detect"),
                            command="`cnnkit benchmark`")
        if loaded.task == "detect":
            return _detector(loaded.model, loaded.name, args), loaded.name, \
                (3, loaded.model.img_size, loaded.model.img_size), loaded
        if args.model and args.model != loaded.name:
            raise CnnkitError(f"--model {args.model} but the checkpoint holds "
                              f"{loaded.name}; give only one of them")
        size = tuple(args.input_size or loaded.image_shape)
        if size != loaded.image_shape:
            raise CnnkitError(f"the checkpoint was trained on {loaded.image_shape} inputs; "
                              f"drop --input-size {' '.join(map(str, size))}")
        return loaded.model, loaded.name, size, loaded
    if not args.model:
        raise CnnkitError("give --model NAME (random weights) or --checkpoint PATH")
    cfg = get_model_cfg(args.model)
    size = tuple(args.input_size or cfg["input_size"])
    kwargs = dict(args.model_args)
    kwargs.setdefault("in_chans", size[0])
    if cfg["fixed_input_size"]:
        kwargs.setdefault("img_size", size[1])
    torch.manual_seed(0)
    model = create_model(args.model, **kwargs).eval()
    if getattr(model, "detector", False):
        model = _detector(model, args.model, args)
        size = (3, model.detector.img_size, model.detector.img_size)
    return model, args.model, size, None


def _detector(model, name: str, args) -> DenseDetections:
    """The raw forward of a detector that has one, as the modes time it."""
    if not hasattr(model, "forward_raw"):
        raise CnnkitError(f"`cnnkit benchmark` times a detector's raw forward before NMS; "
                          f"{name} has none (YOLOv8 models do)")
    if args.input_size and tuple(args.input_size[1:]) != (model.img_size,) * 2:
        raise CnnkitError(f"{name} runs at {model.img_size}×{model.img_size} (its img_size); "
                          f"set --model-args img_size=N instead of --input-size")
    return DenseDetections(model).eval()


def _run_detector(args, model: DenseDetections, name: str, size, ckpt) -> int:
    """Batch 1 and --batch-size (letterboxed test images where there are, else random pixels);
    agreement: the largest |score − fp32's| on those images (there is no top-1 to compare)."""
    found = detector_test_images(ckpt, max(args.batch_size, 1), size[1]) if ckpt else None
    real = found is not None and len(found[0]) >= args.batch_size
    images = found[0][:args.batch_size] if real else \
        torch.rand(args.batch_size, *size, generator=torch.Generator().manual_seed(0))
    weights = "trained weights" if ckpt is not None else "random weights"
    print(f"{name} raw forward (before NMS; {weights}, {count_parameters(model):,} parameters) | "
          f"{size[1]}×{size[2]} | {found[1] if real else 'random pixels'} | torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads | median of {args.rounds}×"
          f"{-(-args.iters // args.rounds)} alternating passes")
    k = model.detector.num_classes - 1
    for batch_size in sorted({1, args.batch_size}):
        batch = images[:batch_size].contiguous()
        results = compare_modes(model, batch, args.modes, rounds=args.rounds,
                                iters=-(-args.iters // args.rounds), warmup=args.warmup)
        print(f"batch {batch_size}:")
        print(format_table(results, {}))
        if batch_size == max(1, args.batch_size):
            with torch.no_grad():
                reference = model(batch)[..., 4:]  # (N, A, K) fp32 scores
            gaps = [f"{r.mode} {(r.runner(batch)[..., 4:4 + k] - reference).abs().max():.2e}"
                    for r in results if r.runner is not None and r.mode != "fp32"]
            if gaps:
                print(f"largest |score − fp32 score| on batch {batch_size}: {', '.join(gaps)}")
    return 0


def run(args) -> int:
    for flag in ("batch_size", "iters", "rounds"):
        if getattr(args, flag) < 1:
            raise CnnkitError(f"--{flag.replace('_', '-')} must be ≥ 1, got {getattr(args, flag)}")
    if min(args.input_size or (1,)) < 1:
        raise CnnkitError(f"--input-size must be positive, got {tuple(args.input_size)}")
    model, name, size, ckpt = _build(args)
    if isinstance(model, DenseDetections):
        return _run_detector(args, model, name, size, ckpt)
    if args.images > 0:
        found = (checkpoint_test_images(ckpt, args.images) if ckpt is not None
                 else photo_images(args.images, *size, source=args.photos) if args.photos
                 else None)
    else:
        found = None
    # The timed batch: real images where there are enough, else random ones (speed does not
    # depend on pixel values for these models).
    if found is not None and len(found[0]) >= args.batch_size:
        batch = found[0][:args.batch_size].contiguous()
    else:
        batch = torch.randn(args.batch_size, *size, generator=torch.Generator().manual_seed(0))
    try:
        model(batch[:1])
    except RuntimeError as exc:  # e.g. an input too small for the architecture
        raise CnnkitError(f"{name} cannot run on input {size}: "
                          f"{str(exc).splitlines()[0]}") from None

    weights = "trained weights" if ckpt is not None else "random weights"
    print(f"{name} ({weights}, {count_parameters(model):,} parameters) | batch {args.batch_size} "
          f"× {size[0]}×{size[1]}×{size[2]} | torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads | median of {args.rounds}×"
          f"{-(-args.iters // args.rounds)} alternating passes")
    results = compare_modes(model, batch, args.modes, rounds=args.rounds,
                            iters=-(-args.iters // args.rounds), warmup=args.warmup)
    agreements = {}
    if found is not None:
        images, what = found
        for r in results:
            if r.runner is not None:
                agreements[r.mode] = agreement(model, r.runner, images,
                                               batch_size=args.batch_size)
        note = ("" if ckpt is not None else "; random weights give near-flat logits, so this "
                "is a weak signal — check a trained checkpoint with --checkpoint")
        print(f"top-1 agreement with fp32 on {what}{note}")
    elif args.images > 0:
        print("top-1 agreement not checked: no real images found (give --photos, or a "
              "checkpoint whose data set is on disk)")
    print(format_table(results, agreements))
    return 0
