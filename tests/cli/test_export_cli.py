"""`cnnkit export`: ONNX and TorchScript files that compute what the PyTorch model computes."""
import re
import zipfile
from dataclasses import asdict

import onnxruntime
import pytest
import torch
from torch import nn

from cnnkit.cli.main import build_parser, main
from cnnkit.models import create_model
from cnnkit.train import TrainConfig
from cnnkit.engine.checkpoint import save_checkpoint
from cnnkit.inference.load import load_model
from cnnkit.inference.export import export_model, export_onnx
from cnnkit.inference.modes import checkpoint_test_images
from cnnkit.utils import CnnkitError
from tests.cli._run import cnnkit
from tests.conftest import DATASETS

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


@pytest.fixture(scope="module")
def lenet_ckpt(tmp_path_factory):
    """A LeNet trained for one epoch on digits by the real `cnnkit train`."""
    out = tmp_path_factory.mktemp("runs")
    proc = cnnkit("train", "--dataset", "digits", "--epochs", "1", "--batch-size", "64",
                  "--quiet", "--threads", "1", "--out-dir", out, "--name", "lenet")
    assert proc.returncode == 0, proc.stderr
    return out / "lenet" / "best.pt"


@pytest.fixture(scope="module")
def resnet_ckpt(tmp_path_factory):
    """A resnet18 (small_input) checkpoint over a folder of real CIFAR-10 photos; its BatchNorm
    statistics are filled from those photos, so the layers do not act as identities."""
    root = tmp_path_factory.mktemp("resnet")
    folder = root / "cifar"
    with zipfile.ZipFile(DATASETS / "cifar10-jpg" / "test.zip") as archive:
        names = sorted(n for n in archive.namelist() if n.endswith(".jpg"))
        for name in names[::250]:  # 40 photos, 4 of each class
            _, cls, file = name.split("/")
            (folder / cls).mkdir(parents=True, exist_ok=True)
            (folder / cls / file).write_bytes(archive.read(name))
    classes = sorted(d.name for d in folder.iterdir())
    kwargs = dict(num_classes=len(classes), in_chans=3, small_input=True)
    torch.manual_seed(0)
    model = create_model("resnet18", **kwargs)
    config = asdict(TrainConfig(model="resnet18", dataset="imagefolder", data_dir=str(folder),
                                image_size=32, model_args={"small_input": True}))
    ckpt = dict(task="classify", config=config, models={"model": model.state_dict()},
                spec={"models": {"model": {"name": "resnet18", "kwargs": kwargs}},
                      "infer": "model", "classes": classes, "mean": CIFAR_MEAN,
                      "std": CIFAR_STD, "image_shape": (3, 32, 32)})
    save_checkpoint(root / "resnet.pt", ckpt)
    images, _ = checkpoint_test_images(load_model(root / "resnet.pt"), 64)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None  # a cumulative average: one pass gives the exact statistics
    model.train()
    with torch.no_grad():
        model(images)
    ckpt["models"]["model"] = model.state_dict()
    save_checkpoint(root / "resnet.pt", ckpt)
    return root / "resnet.pt"


def _run_file(path, fmt, images):
    """The exported file run by its own runtime, independently of cnnkit.inference.export."""
    if fmt == "onnx":
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert session.get_inputs()[0].shape[0] == "batch"  # a symbolic batch dimension
        return torch.from_numpy(session.run(None, {"images": images.numpy()})[0])
    return torch.jit.load(str(path))(images)


def _check_against_pytorch(ckpt_path, out, fmt):
    """Our own check, at a batch size the export never saw (its example batch had 2 images)."""
    ckpt = load_model(ckpt_path)
    model = ckpt.model
    images, _ = checkpoint_test_images(ckpt, 7)
    with torch.no_grad():
        expected = model(images)
    got = _run_file(out, fmt, images)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def _reported_diff(stdout: str) -> float:
    diff = float(re.search(r"PyTorch\| = ([\d.e+-]+) on \d+ \w+ test images", stdout).group(1))
    assert diff <= 1e-4  # and checked on the data set's real images, not random ones
    return diff


def test_export_command_writes_a_checked_onnx_file(lenet_ckpt):
    """The real command in a subprocess; a run folder means its best.pt, ONNX by default."""
    proc = cnnkit("export", lenet_ckpt.parent)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # the exporters' chatter is kept quiet
    _reported_diff(proc.stdout)
    out = lenet_ckpt.parent / "best.onnx"
    assert str(out) in proc.stdout
    _check_against_pytorch(lenet_ckpt, out, "onnx")


@pytest.mark.parametrize("which, fmt", [("lenet_ckpt", "torchscript"), ("resnet_ckpt", "onnx"),
                                        ("resnet_ckpt", "torchscript")])
def test_export_matches_pytorch(which, fmt, request, tmp_path, capsys):
    # In-process through the command's own parser: the same code path as above without paying
    # a new interpreter and torch import per case.
    ckpt_path = request.getfixturevalue(which)
    out = tmp_path / f"model.{fmt}"
    args = build_parser().parse_args(["export", str(ckpt_path), "--format", fmt, "-o", str(out)])
    assert args.run(args) == 0
    _reported_diff(capsys.readouterr().out)
    _check_against_pytorch(ckpt_path, out, fmt)


def test_legacy_onnx_exporter_also_matches(lenet_ckpt, tmp_path):
    """The fallback path (dynamo=False), run directly: same outputs, batch still dynamic."""
    ckpt = load_model(lenet_ckpt)
    model = ckpt.model
    images, _ = checkpoint_test_images(ckpt, 5)
    assert "legacy" in export_onnx(model, images[:2], tmp_path / "m.onnx", dynamo=False)
    with torch.no_grad():
        torch.testing.assert_close(_run_file(tmp_path / "m.onnx", "onnx", images), model(images),
                                   atol=1e-4, rtol=0)


def test_a_file_that_disagrees_is_never_written(lenet_ckpt, tmp_path):
    ckpt = load_model(lenet_ckpt)
    model = ckpt.model
    images, _ = checkpoint_test_images(ckpt, 16)
    out = tmp_path / "m.onnx"
    report = export_model(model, out, "onnx", images)
    assert 0 < report.max_abs_diff <= 1e-4 and report.batch_sizes == (16, 1)
    out.unlink()
    # onnxruntime's float32 kernels differ from PyTorch's by ~1e-6, so a zero tolerance fails.
    with pytest.raises(CnnkitError, match="differs from PyTorch"):
        export_model(model, out, "onnx", images, tolerance=0.0)
    assert list(tmp_path.iterdir()) == []  # neither the file nor a temporary left behind


@pytest.mark.parametrize("args, fragments", [
    (["export", "no/such/checkpoint.pt"], ["not found"]),
    (["export", "x.pt", "--format", "tflite"], ["--format", "invalid choice"]),
])
def test_bad_input_is_one_line_exit_2(args, fragments, capsys):
    with pytest.raises(SystemExit) as exit_info:  # main() in this process, as the script runs it
        main(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert len(err.strip().splitlines()) == 1, err  # one line, no traceback
    assert all(fragment in err for fragment in fragments), err
