"""Two unpaired domains as a two-class classification set: horse2zebra-domains (the registered
horse2zebra folder) and unpaired-domains (any ROOT with trainA/ trainB/ testA/ testB/), on real
photos."""
import pytest
import torch

from cnnkit.data import get_dataset_info, load_dataset
from cnnkit.data.array_dataset import channel_stats
from cnnkit.data.datasets import HORSE2ZEBRA_MEAN, HORSE2ZEBRA_STD
from cnnkit.data.imagefolder import decode_image
from cnnkit.data.unpaired import load_unpaired
from cnnkit.utils import CnnkitError
from tests.data.test_unpaired import COUNTS, HORSE2ZEBRA, make_unpaired

# Mean RGB of each training folder as horse2zebra-128/README.txt states it (0-1, four digits).
README_MEAN = {"trainA": (0.5265, 0.5188, 0.4581), "trainB": (0.4831, 0.4674, 0.3975)}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """DATA_DIR/horse2zebra-128: 5 + 7 training and 3 + 2 test photos (unequal on purpose)."""
    data_dir = tmp_path_factory.mktemp("domains")
    root = make_unpaired(data_dir / "horse2zebra-128", n_train=7, n_test=3)
    for folder, keep in (("trainA", 5), ("testB", 2)):
        for path in sorted((root / folder).iterdir())[keep:]:
            path.unlink()
    return data_dir


def test_registered_domains_are_two_interleaved_classes(data_dir):
    info = get_dataset_info("horse2zebra-domains")
    assert info.task == "classify" and info.classes == ("horse", "zebra")
    assert info.train_size == COUNTS["trainA"] + COUNTS["trainB"]
    assert info.test_size == COUNTS["testA"] + COUNTS["testB"]
    pairs = load_unpaired(data_dir / "horse2zebra-128", "train")
    train = load_dataset("horse2zebra-domains", "train", data_dir=data_dir)
    assert train.images.shape == (12, 3, 128, 128) and train.classes == ["horse", "zebra"]
    # A₀ B₀ A₁ B₁ ... A₄ B₄, then B's surplus B₅ B₆: a --train-limit keeps both classes.
    assert train.labels.tolist() == [0, 1] * 5 + [1, 1]
    expected = [pairs.a[i // 2] if i % 2 == 0 else pairs.b[i // 2] for i in range(10)]
    expected += [pairs.b[5], pairs.b[6]]
    assert torch.equal(train.images, torch.stack(expected))
    test = load_dataset("horse2zebra-domains", "test", data_dir=data_dir, image_size=64)
    assert test.images.shape == (5, 3, 64, 64) and test.labels.tolist() == [0, 1, 0, 1, 0]
    assert test.hflip_ok
    assert (test.mean, test.std) == (HORSE2ZEBRA_MEAN, HORSE2ZEBRA_STD)


def test_registered_statistics_are_the_training_photos():
    # The mean follows from the README's per-folder means weighted by its published counts.
    n_a, n_b = COUNTS["trainA"], COUNTS["trainB"]
    for c in range(3):
        weighted = (n_a * README_MEAN["trainA"][c] + n_b * README_MEAN["trainB"][c]) / (n_a + n_b)
        assert HORSE2ZEBRA_MEAN[c] == pytest.approx(weighted, abs=1.5e-4)
    # The std from every 8th training photo (300 of 2,401: decoding all takes ~15 s).
    files = {d: sorted((HORSE2ZEBRA / f"train{d}").iterdir())[::8] for d in "AB"}
    images = torch.stack([decode_image(p, channels=3) for d in "AB" for p in files[d]])
    mean, std = channel_stats(images)
    assert mean == pytest.approx(HORSE2ZEBRA_MEAN, abs=0.01)
    assert std == pytest.approx(HORSE2ZEBRA_STD, abs=0.005)


def test_unpaired_domains_reads_any_folder_with_its_own_statistics(data_dir):
    root = data_dir / "horse2zebra-128"
    info = get_dataset_info("unpaired-domains")
    assert info.classes == ("A", "B") and info.mean is None
    train = load_dataset("unpaired-domains", "train", data_dir=root, image_size=32)
    test = load_dataset("unpaired-domains", "test", data_dir=root, image_size=32)
    assert train.classes == ["A", "B"] and train.class_counts() == [5, 7]
    assert test.class_counts() == [3, 2] and test.images.shape[1:] == (3, 32, 32)
    # Both splits are normalised with the training images' own statistics at that size.
    pairs = load_unpaired(root, "train", load_size=32)
    stats = channel_stats(torch.cat([pairs.a, pairs.b]))
    assert (train.mean, train.std) == stats and (test.mean, test.std) == stats
    assert torch.equal(train.images[:2], torch.stack([pairs.a[0], pairs.b[0]]))
    grey = load_dataset("unpaired-domains", "test", data_dir=root, image_size=16, channels=1)
    assert grey.images.shape == (5, 1, 16, 16)


def test_bad_folders_are_one_line_errors(data_dir, tmp_path):
    with pytest.raises(CnnkitError, match=r"unpaired-domains needs data_dir \(--data-dir\)"):
        load_dataset("unpaired-domains", "train")
    with pytest.raises(CnnkitError, match=r"horse2zebra-domains is not downloaded automatically: "
                                          r"put its files in .*horse2zebra-128"):
        load_dataset("horse2zebra-domains", "train", data_dir=tmp_path)
    (tmp_path / "trainA").mkdir()
    with pytest.raises(CnnkitError, match=r"trainA holds no images"):
        load_dataset("unpaired-domains", "train", data_dir=tmp_path)
