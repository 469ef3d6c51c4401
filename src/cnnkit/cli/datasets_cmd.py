"""`cnnkit datasets`: every registered data set, where it comes from, and its training recipe."""


def add_arguments(parser) -> None:
    pass


def run(args) -> int:
    from cnnkit.data import get_dataset_info, list_datasets  # noqa: PLC0415  (torch: not at --help)
    names = list_datasets()
    width = max(14, *map(len, names))  # oxford-pets-det is 15 characters
    print(f"{'name':<{width}} {'classes':>7} {'shape':>9} {'train':>7} {'test':>6}  source")
    for name in names:
        info = get_dataset_info(name)
        shape = f"{info.channels}×{info.image_size}" if info.image_size else "any"
        train = f"{info.train_size:,}" if info.train_size else "-"
        test = f"{info.test_size:,}" if info.test_size else "-"
        classes = info.num_classes or "any"
        print(f"{name:<{width}} {classes:>7} {shape:>9} {train:>7} {test:>6}  {info.source}")
        print(f"{'':<{width}} {info.description}")
        print(f"{'':<{width}} recipe: {recipe_summary(info.recipe)}")
    return 0


# How `recipe_summary` words each recipe key; any other key prints as key=value.
_RECIPE_WORDS = {"batch_size": "batch {}", "translate": "shift ±{} px",
                 "lr": "lr {:g}", "label_smoothing": "label smoothing {:g}",
                 "crop_size": "crops {} px", "max_scale": "scale up to ×{:g}",
                 "seg_loss": "loss {}", "class_weights": "{} class weights",
                 "elastic": "elastic deformation", "vflip": "vertical flips",
                 "border_weight": "border weights"}


def recipe_summary(recipe: dict) -> str:
    """`30 epochs, batch 32, shift ±2 px`: a data set's training recipe in words."""
    return ", ".join(f"{value} epoch{'s' * (value != 1)}" if key == "epochs" else
                     _RECIPE_WORDS.get(key, key + "={}").format(value)
                     for key, value in recipe.items()
                     # no shift, an option off: not worth a word
                     if not (key == "translate" and not value) and value is not False)
