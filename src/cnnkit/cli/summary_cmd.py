"""`cnnkit summary MODEL`: a Keras/torchinfo-style table of the model's layers, and what its
output is (logits, or LeNet's log-probabilities)."""
from cnnkit.cli._args import parse_kv
from cnnkit.cli.models_cmd import OUTPUTS
from cnnkit.utils import CnnkitError


def add_arguments(parser) -> None:
    parser.add_argument("model", help="registered model name")
    parser.add_argument("--input-size", type=int, nargs=3, metavar=("C", "H", "W"),
                        help="input shape (default: the model's)")
    parser.add_argument("--num-classes", type=int, default=None)
    parser.add_argument("--depth", type=int, default=3, help="nesting depth of the rows shown")
    parser.add_argument("--model-args", type=parse_kv, default={}, metavar="K=V,...")


def run(args) -> int:
    from cnnkit.inference.load import output_kind  # noqa: PLC0415  (torch: not for --help)
    from cnnkit.models import create_model, get_model_cfg  # noqa: PLC0415
    from cnnkit.models._summary import format_summary, summarize  # noqa: PLC0415
    cfg = get_model_cfg(args.model)
    input_size = tuple(args.input_size or cfg["input_size"])
    kwargs = dict(args.model_args, in_chans=input_size[0])
    if args.num_classes:
        kwargs["num_classes"] = args.num_classes
    if cfg["fixed_input_size"]:
        kwargs.setdefault("img_size", input_size[1])
    if min(input_size) <= 0:
        raise CnnkitError(f"--input-size must be positive, got {input_size}")
    model = create_model(args.model, **kwargs)
    try:
        summary = summarize(model, input_size, depth=args.depth)
    except RuntimeError as exc:  # e.g. an input too small for the architecture
        raise CnnkitError(f"{args.model} cannot run on input {input_size}: "
                          f"{str(exc).splitlines()[0]}") from None
    print(format_summary(summary))
    kind = output_kind(model)
    print(f"output: {kind}: {OUTPUTS[kind]}")
    return 0
