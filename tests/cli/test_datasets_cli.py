"""`cnnkit datasets` as a user runs it: every registered data set, its counts and its recipe."""
from cnnkit.data import get_dataset_info, list_datasets
from tests.cli._run import cnnkit


def test_lists_every_registered_data_set_with_counts_and_recipe():
    proc = cnnkit("datasets")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    rows = {line.split()[0]: i for i, line in enumerate(lines) if not line.startswith(" ")}
    assert set(rows) == {"name", *list_datasets()}  # a header, then one row per entry
    for name in list_datasets():
        info = get_dataset_info(name)
        row, description, recipe = lines[rows[name]:rows[name] + 3]
        counts = [f"{n:,}" if n else "-" for n in (info.train_size, info.test_size)]
        assert row.split()[1:5] == [str(info.num_classes or "any"),
                                    f"{info.channels}×{info.image_size}" if info.image_size
                                    else "any", *counts], row
        assert row.endswith(info.source) and description.strip() == info.description
        epochs = info.recipe["epochs"]
        assert recipe.strip().startswith(f"recipe: {epochs} epoch{'s' * (epochs != 1)}, "
                                         f"batch {info.recipe['batch_size']}"), recipe
    assert "recipe: 30 epochs, batch 32, shift ±2 px" in proc.stdout  # digits
    # mnist: one epoch in the singular, no shift (not worded), lr and label smoothing worded
    assert "recipe: 1 epoch, batch 128, lr 0.006, label smoothing 0.1\n" in proc.stdout
    assert ("recipe: 200 epochs, batch 8, crops 176 px, scale up to ×1.25, loss ce+dice, "
            "balanced class weights\n") in proc.stdout  # camvid
    assert ("recipe: 800 epochs, batch 4, crops 256 px, elastic deformation, vertical flips, "
            "border weights\n") in proc.stdout  # isbi2012: the options that are on, in words
