"""`cnnkit models [PATTERN]`: registered models with their parameter counts."""
import torch

from cnnkit.models import count_parameters, create_model, get_model_cfg, list_models


def add_arguments(parser) -> None:
    parser.add_argument("pattern", nargs="?", default="*", help="fnmatch pattern, e.g. 'resnet*'")


def run(args) -> int:
    names = list_models(args.pattern)
    if not names:
        print(f"no model matches '{args.pattern}'")
        return 0
    width = max(22, *map(len, names))
    print(f"{'model':<{width}} {'params (default)':>22}  input")
    for name in names:
        try:
            with torch.device("meta"):  # shapes only: no memory, no initialisation cost
                params = count_parameters(create_model(name))
        except (NotImplementedError, RuntimeError):  # a builder that computes with real data
            params = count_parameters(create_model(name))
        size = "×".join(map(str, get_model_cfg(name)["input_size"]))
        print(f"{name:<{width}} {params:>22,}  {size}")
    return 0
