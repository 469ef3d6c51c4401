"""`cnnkit datasets`: the data sets cnnkit can load, and where they come from."""
from cnnkit.data import get_dataset_info, list_datasets


def add_arguments(parser) -> None:
    pass


def run(args) -> int:
    print(f"{'name':<14} {'classes':>7} {'shape':>9} {'train':>7} {'test':>6}  source")
    for name in list_datasets():
        info = get_dataset_info(name)
        shape = f"{info.channels}×{info.image_size}" if info.image_size else "any"
        train = f"{info.train_size:,}" if info.train_size else "-"
        test = f"{info.test_size:,}" if info.test_size else "-"
        classes = info.num_classes or "any"
        print(f"{name:<14} {classes:>7} {shape:>9} {train:>7} {test:>6}  {info.source}")
        print(f"{'':<14} {info.description}")
    return 0
