"""Inference modes against eager fp32 as the oracle, on real images (digits, CIFAR-10 photos)."""
import io
import zipfile
from dataclasses import asdict, replace

import numpy as np
import pytest
import torch
import torch._inductor.config as inductor_config
from PIL import Image
from torch import nn
from torch._dynamo.utils import counters

from cnnkit.data import load_dataset
from cnnkit.models import create_model
from cnnkit.train import TrainConfig, train
from cnnkit.inference.load import LoadedModel, load_model
from cnnkit.inference.modes import (EAGER_MODES, InferenceModel, agreement,
                                    checkpoint_test_images, choose_mode, compare_modes, measure,
                                    photo_images, prepare)
from cnnkit.utils import CnnkitError
from tests.conftest import DATASETS

CIFAR10_TEST_ZIP = DATASETS / "cifar10-jpg" / "test.zip"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(checkpoint dict, LeNet trained 3 epochs on digits, its normalised test images)."""
    out = tmp_path_factory.mktemp("runs")
    config = TrainConfig(dataset="digits", epochs=3, batch_size=64, quiet=True, threads=1,
                         out_dir=str(out), name="lenet")
    train(config, log=lambda *_: None)
    ckpt = load_model(out / "lenet" / "best.pt")
    test = load_dataset("digits", "test")
    images = (test.images.float() / 255 - ckpt.mean[0]) / ckpt.std[0]  # (360, 1, 28, 28)
    return ckpt, ckpt.model, images


def test_eager_modes_compute_the_fp32_function(trained):
    _, model, images = trained
    reference = model(images).detach()
    fp32 = prepare(model, "fp32")(images)
    assert torch.equal(fp32, reference)  # fp32 mode is the model itself
    nhwc = prepare(model, "channels_last")(images)
    assert nhwc.dtype == torch.float32
    torch.testing.assert_close(nhwc, reference, atol=1e-4, rtol=1e-4)
    bf16 = prepare(model, "bf16")(images)
    assert bf16.dtype == torch.float32 and bf16.shape == reference.shape
    diff = (bf16 - reference).abs().max().item()
    # bf16 really ran (8-bit mantissa: outputs move), and only by rounding-sized amounts.
    assert 0 < diff < 0.05 * reference.abs().max().item()


def test_prepare_leaves_the_callers_model_alone(trained):
    _, model, images = trained
    before = model(images[:8]).detach()
    prepare(model, "channels_last")
    prepare(model, "bf16")
    assert all(p.is_contiguous() for p in model.parameters())  # no NHWC conversion in place
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert torch.equal(model(images[:8]).detach(), before)


def test_agreement_is_the_fraction_of_equal_top1(trained):
    _, model, images = trained
    torch.manual_seed(1)
    other = create_model("lenet").eval()  # an untrained LeNet disagrees on most images
    expected = (other(images).argmax(1) == model(images).argmax(1)).double().mean().item()
    runner = InferenceModel(other, "other", channels_last=False, bf16=False)
    assert agreement(model, runner, images, batch_size=50) == pytest.approx(expected)
    assert expected < 0.5
    assert agreement(model, "fp32", images) == 1.0


def test_choose_mode_on_a_trained_model(trained):
    _, model, images = trained
    mode, agree = choose_mode(model, images)
    assert mode in EAGER_MODES and agree >= 0.995
    assert agree == pytest.approx(agreement(model, mode, images))
    assert choose_mode(model, images, min_agreement=1.01) == ("fp32", 1.0)  # nothing passes


class NearTie(nn.Module):
    """Ten logits of ~100 that differ by < 0.1: bf16 (spacing 0.5 at 100) cannot order them."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 10, 28)  # one output per class, from the whole image
        with torch.no_grad():
            self.conv.weight.mul_(0.01)
            self.conv.bias.fill_(100.0)

    def forward(self, x):
        return self.conv(x).flatten(1)


def test_choose_mode_rejects_a_mode_that_changes_predictions(trained):
    _, _, images = trained
    torch.manual_seed(0)
    model = NearTie().eval()
    assert agreement(model, "bf16", images) < 0.9
    mode, agree = choose_mode(model, images)
    assert mode != "bf16" and agree >= 0.995


def test_measure_and_compare_modes_give_throughputs(trained):
    _, model, images = trained
    assert measure(model, "channels_last", images[:32], warmup=1, iters=3) > 0
    results = compare_modes(model, images[:32], EAGER_MODES, rounds=2, iters=1, warmup=1)
    assert [r.mode for r in results] == list(EAGER_MODES)
    assert all(r.images_per_s > 0 and r.compile_seconds is None for r in results)


def test_compile_mode_matches_its_eager_base_with_frozen_prepacked_weights(trained):
    _, model, images = trained
    counters.clear()
    try:  # a cached graph would skip the passes whose work is counted
        with inductor_config.patch(fx_graph_cache=False):
            runner = prepare(model, "compile", example=images[:16], compile_base="channels_last")
    except CnnkitError as exc:  # no C++ toolchain: the benchmark reports the same skip
        pytest.skip(str(exc))
    assert runner.mode == "compile(channels_last)" and runner.compile_seconds > 0
    # Freezing ran: both of LeNet's convolutions were prepacked for oneDNN.
    assert counters["inductor"]["mkldnn_conv_weight_pack_matcher_count"] == 2
    torch.testing.assert_close(runner(images[:16]), model(images[:16]).detach(),
                               atol=1e-4, rtol=1e-4)
    # 360 images in batches of 16: the last, partial batch is padded, not recompiled.
    assert agreement(model, runner, images) >= 0.995


def test_two_compiled_models_of_one_shape_keep_their_own_frozen_weights():
    # Frozen weights are constants of the compiled graph: a second model of the same class and
    # shapes must get its own graph, not reuse the first one's (dynamo's cache is per class).
    x = torch.randn(4, 1, 28, 28)
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = create_model("lenet", num_classes=10, in_chans=1).eval()
        try:
            runner = prepare(model, "compile", example=x, compile_base="channels_last")
        except CnnkitError as exc:
            pytest.skip(str(exc))
        torch.testing.assert_close(runner(x), model(x).detach(), atol=1e-4, rtol=1e-4)


def test_checkpoint_test_images(trained, tmp_path):
    ckpt, _, images = trained
    got, what = checkpoint_test_images(ckpt, 64)
    assert what == "64 digits test images" and got.shape == (64, 1, 28, 28)
    index = torch.linspace(0, 359, 64).round().long()
    torch.testing.assert_close(got, images[index])  # evenly spaced, normalised as trained
    # A data set that is not on disk is never downloaded: no images instead.
    offline = replace(ckpt, config={**ckpt.config, "dataset": "mnist",
                                    "data_dir": str(tmp_path / "empty")})
    assert checkpoint_test_images(offline, 64) is None
    assert not (tmp_path / "empty").exists()


def _cifar_folder(root, per_class):
    """ROOT/<class>/*.jpg: the first `per_class` CIFAR-10 test photos of every class."""
    with zipfile.ZipFile(DATASETS / "cifar10-jpg" / "test.zip") as archive:
        names = sorted(n for n in archive.namelist() if n.endswith(".jpg"))
        for cls in sorted({n.split("/")[1] for n in names}):
            for name in [n for n in names if n.split("/")[1] == cls][:per_class]:
                (root / cls).mkdir(parents=True, exist_ok=True)
                (root / cls / name.split("/")[-1]).write_bytes(archive.read(name))
    return root


def test_checkpoint_test_images_of_an_image_folder(tmp_path):
    folder = _cifar_folder(tmp_path / "cifar", per_class=5)
    config = asdict(TrainConfig(model="resnet18", dataset="imagefolder", data_dir=str(folder)))
    ckpt = LoadedModel(nn.Identity(), "classify", "resnet18", [], (0.5, 0.5, 0.5),
                       (0.25, 0.25, 0.25), (3, 32, 32), config, {}, tmp_path / "best.pt")
    got, what = checkpoint_test_images(ckpt, 100)
    assert what == "10 imagefolder test images"  # the automatic 80/20 split: 1 of 5 per class
    assert got.shape == (10, 3, 32, 32)
    assert got.min() >= -2.0 and got.max() <= 2.0  # (x/255 − 0.5)/0.25 spans [−2, 2]


def test_photo_images_are_real_cifar_photos():
    got, what = photo_images(10, 3, 32, 32, source=CIFAR10_TEST_ZIP)
    assert f"10 photos from {CIFAR10_TEST_ZIP}" in what and got.shape == (10, 3, 32, 32)
    # Oracle: the same 10 files (evenly spaced by sorted name) decoded by PIL directly and
    # normalised by their own per-channel mean and std.
    with zipfile.ZipFile(CIFAR10_TEST_ZIP) as archive:
        names = sorted(n for n in archive.namelist() if n.endswith(".jpg"))
        picked = [names[round(i * (len(names) - 1) / 9)] for i in range(10)]
        pixels = np.stack([np.asarray(Image.open(io.BytesIO(archive.read(n))).convert("RGB"))
                           for n in picked]).astype(np.float64) / 255  # (10, 32, 32, 3)
    mean, std = pixels.mean(axis=(0, 1, 2)), pixels.std(axis=(0, 1, 2))
    expected = torch.from_numpy((pixels - mean) / std).permute(0, 3, 1, 2).float()
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    grey, _ = photo_images(3, 1, 48, 40, source=CIFAR10_TEST_ZIP)  # grey, non-square: one resize
    assert grey.shape == (3, 1, 48, 40)
    assert photo_images(3, 3, 32, 32, source=DATASETS / "no-such.zip") is None
