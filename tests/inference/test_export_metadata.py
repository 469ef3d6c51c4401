"""Exported files carry their preprocessing and class names; `--with-preprocessing` takes pixels;
LeNet's log-probabilities are named as such (and every other classifier's logits)."""
from dataclasses import asdict

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from cnnkit.engine.checkpoint import save_checkpoint
from cnnkit.inference.export import read_metadata
from cnnkit.inference.load import load_model, output_kind
from cnnkit.inference.modes import checkpoint_test_images
from cnnkit.models import create_model
from cnnkit.train import TrainConfig
from tests.cli._run import cnnkit

CLASSES = [f"digit {i}" for i in range(10)]  # not the default names: they must come from the spec
MEAN, STD = (0.3054,), (0.3246,)


@pytest.fixture(scope="module")
def lenet_ckpt(tmp_path_factory):
    """A LeNet checkpoint (seeded random weights) of the digits data set, which needs no
    download, so the export is checked on real test images."""
    root = tmp_path_factory.mktemp("lenet")
    torch.manual_seed(0)
    kwargs = dict(num_classes=10, in_chans=1)
    model = create_model("lenet", **kwargs)
    config = asdict(TrainConfig(model="lenet", dataset="digits", image_size=28))
    save_checkpoint(root / "lenet.pt", dict(
        task="classify", config=config, models={"model": model.state_dict()},
        spec={"models": {"model": {"name": "lenet", "kwargs": kwargs}}, "infer": "model",
              "classes": CLASSES, "mean": MEAN, "std": STD, "image_shape": (1, 28, 28)}))
    return root / "lenet.pt"


def test_output_kind_matches_what_the_models_compute():
    torch.manual_seed(0)
    x = torch.randn(3, 1, 28, 28)
    for name, kwargs in (("lenet", {}), ("simple_cnn", {"in_chans": 1, "num_classes": 10})):
        model = create_model(name, **kwargs).eval()
        with torch.no_grad():
            total = model(x).logsumexp(1)  # 0 exactly when the outputs are log-probabilities
        is_log_probs = bool(torch.allclose(total, torch.zeros(3), atol=1e-5))
        assert output_kind(model) == ("log_probs" if is_log_probs else "logits"), name
    assert output_kind(create_model("lenet")) == "log_probs"


def test_onnx_with_preprocessing_carries_metadata_and_takes_pixels(lenet_ckpt, tmp_path):
    out = tmp_path / "lenet.onnx"
    proc = cnnkit("export", lenet_ckpt, "--format", "onnx", "--with-preprocessing",
                  "--check-images", "16", "-o", out)
    assert proc.returncode == 0, proc.stderr
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}  # as onnx reads it
    assert props["model"] == "lenet" and props["output"] == "log_probs"
    assert props["preprocessing"] == "in_graph"
    meta = read_metadata(out)
    assert meta["classes"] == CLASSES and meta["input_size"] == [1, 28, 28]
    assert meta["mean"] == list(MEAN) and meta["std"] == list(STD)

    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(uint8)"
    assert session.get_outputs()[0].name == "log_probs"
    loaded = load_model(lenet_ckpt)
    images, _ = checkpoint_test_images(loaded, 8)
    pixels = ((images * STD[0] + MEAN[0]) * 255).round().clamp(0, 255).to(torch.uint8)
    got = session.run(None, {session.get_inputs()[0].name: pixels.numpy()})[0]
    with torch.no_grad():
        want = loaded.model(loaded.normalise(pixels)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)
    np.testing.assert_allclose(np.exp(got).sum(1), 1.0, atol=1e-4)  # log-probabilities indeed


def test_torchscript_carries_metadata_and_takes_normalised_floats(lenet_ckpt, tmp_path):
    out = tmp_path / "lenet.torchscript.pt"
    proc = cnnkit("export", lenet_ckpt, "--format", "torchscript", "--check-images", "8",
                  "-o", out)
    assert proc.returncode == 0, proc.stderr
    meta = read_metadata(out)
    assert meta["classes"] == CLASSES and meta["preprocessing"] == "none"
    assert meta["mean"] == list(MEAN) and meta["output"] == "log_probs"
    assert "(pixels/255 − mean)/std" in meta["input"]
    scripted = torch.jit.load(str(out))
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), load_model(lenet_ckpt).model(x))
