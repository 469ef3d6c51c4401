"""Fine-tuning: `--weights` (a cnnkit run folder or a plain state_dict), a new class count
(the head re-initialised, one line), `--freeze`, `--backbone-lr-scale`, and resume flags."""
import numpy as np
import pytest
import torch
from PIL import Image

from cnnkit.models import create_model
from cnnkit.models._weights import freeze_model, model_stages
from cnnkit.train import TrainConfig, train
from cnnkit.train.classify import make_optimizer, set_lr
from cnnkit.train.schedules import lr_at
from cnnkit.utils import CnnkitError
from tests.cli._run import assert_one_line_error, cnnkit
from tests.data.conftest import unzip_cifar_test

QUIET = dict(quiet=True, threads=1, tensorboard=False, precision="fp32")


def _digits_run(tmp_path):
    """A 10-class LeNet run on digits (1×28×28): the checkpoint fine-tuning starts from."""
    train(TrainConfig(model="lenet", dataset="digits", train_limit=256, val_fraction=0.0,
                      epochs=1, batch_size=32, out_dir=str(tmp_path), name="digits", **QUIET),
          log=lambda *_: None)
    return tmp_path / "digits"


def test_finetune_a_saved_run_on_a_folder_with_another_class_count(tmp_path):
    source = _digits_run(tmp_path)
    unzip_cifar_test(tmp_path / "photos", per_class=8, classes=("cat", "dog", "ship"))
    lines = []
    result = train(TrainConfig(model="lenet", dataset="imagefolder",
                               data_dir=str(tmp_path / "photos"), weights=str(source),
                               freeze="backbone", epochs=2, batch_size=8, val_fraction=0.0,
                               out_dir=str(tmp_path), name="tuned", **QUIET),
                   log=lines.append)
    assert f"classifier 'fc2' re-initialised: {source / 'best.pt'} has 10 classes, the model " \
           f"has 3" in lines  # a run folder means its best.pt, else last.pt (as `cnnkit eval`)
    assert any(line.startswith(f"fine-tuning from {source} | frozen: backbone") for line in lines)
    before = torch.load(source / "best.pt", weights_only=True)["models"]["model"]
    after = torch.load(result.run_dir / "last.pt", weights_only=True)
    assert after["spec"]["image_shape"] == [1, 28, 28]  # the checkpoint's size and channels
    assert after["spec"]["models"]["model"]["kwargs"]["num_classes"] == 3
    weights = after["models"]["model"]
    for key in before:  # the frozen backbone is the checkpoint's, exactly; the head trained
        if key.startswith("fc2."):
            assert weights[key].shape[0] == 3
        else:
            assert torch.equal(weights[key], before[key]), key
    # The same through the CLI, from a plain (torchvision-layout) state_dict, via the older
    # --model-args weights=PATH (one code path), without freezing.
    plain = tmp_path / "lenet.pth"
    torch.save(before, plain)
    proc = cnnkit("train", "--model", "lenet", "--dataset", "imagefolder", "--data-dir",
                  tmp_path / "photos", "--model-args", f"weights={plain}", "--epochs", "1",
                  "--batch-size", "8", "--out-dir", tmp_path, "--name", "cli", "--quiet",
                  "--threads", "1", "--no-tensorboard")
    assert proc.returncode == 0, proc.stderr
    assert f"classifier 'fc2' re-initialised: {plain} has 10 classes" in proc.stdout + proc.stderr
    saved = torch.load(tmp_path / "cli" / "last.pt", weights_only=True)
    assert "weights" not in saved["spec"]["models"]["model"]["kwargs"]  # eval needs no file
    with pytest.raises(CnnkitError, match="holds a 'lenet' checkpoint, not 'simple_cnn'"):
        train(TrainConfig(model="simple_cnn", weights=str(source), out_dir=str(tmp_path),
                          **QUIET), log=lambda *_: None)
    # `predict` shows the model the evaluation crop it was trained on: a photo framed by wide
    # borders predicts as the photo alone (squeezed to a square, the borders would fill it).
    photo = sorted((tmp_path / "photos" / "cat").iterdir())[0]
    pixels = np.asarray(Image.open(photo).convert("RGB"))  # 32×32
    border = np.full((32, 40, 3), 255, np.uint8)
    Image.fromarray(np.concatenate([border, pixels, border], axis=1)).save(tmp_path / "wide.png")
    Image.fromarray(pixels).save(tmp_path / "alone.png")
    proc = cnnkit("predict", result.run_dir, tmp_path / "alone.png", tmp_path / "wide.png",
                  "--precision", "fp32", "--topk", "3")
    assert proc.returncode == 0, proc.stderr
    alone, wide = proc.stdout.split(str(tmp_path / "wide.png"))
    assert alone.split(str(tmp_path / "alone.png"))[1].strip() == wide.strip()


def test_backbone_lr_scale_keeps_its_ratio_through_the_schedule(tmp_path):
    path = tmp_path / "r.pth"
    torch.save(create_model("resnet18", num_classes=10).state_dict(), path)
    config = TrainConfig(model="resnet18", weights=str(path), backbone_lr_scale=0.1, lr=0.02,
                         schedule="onecycle")
    model = create_model("resnet18", num_classes=4)
    optimizer = make_optimizer(config, model)
    parts = {g["part"]: g for g in optimizer.param_groups}
    assert [p for p in parts["head"]["params"]] == [model.fc.weight, model.fc.bias]
    assert len(parts["backbone"]["params"]) == len(list(model.parameters())) - 2
    for step in (0, 7, 19):
        lr = set_lr(optimizer, config, step, total_steps=20, steps_per_epoch=5)
        expected = lr_at(step, total_steps=20, steps_per_epoch=5, lr=0.02, schedule="onecycle",
                         warmup_epochs=0.0, step_size=10, gamma=0.1)
        assert parts["head"]["lr"] == lr == expected
        assert abs(parts["backbone"]["lr"] - 0.1 * expected) < 1e-15
    with pytest.raises(CnnkitError, match="--backbone-lr-scale is for fine-tuning: give "
                                          "--weights too"):
        TrainConfig(backbone_lr_scale=0.1).validate()
    with pytest.raises(CnnkitError, match="--freeze must be none, backbone or a number"):
        TrainConfig(freeze="some").validate()


def test_freezing_n_stages_keeps_frozen_batchnorm_in_eval_mode(tmp_path):
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=3, small_input=True)
    assert model_stages(model) == [["conv1", "bn1", "layer1"], ["layer2"], ["layer3"],
                                   ["layer4"]]
    line = freeze_model(model, "2")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any(n.startswith(("conv1.", "bn1.", "layer1.", "layer2.")) for n in trainable)
    assert any(n.startswith("layer3.") for n in trainable) and "fc.weight" in trainable
    assert f"{sum(p.numel() for p in model.parameters() if p.requires_grad):,} of" in line
    frozen_bn, live_bn = model.layer2[0].bn1, model.layer3[0].bn1
    stats = frozen_bn.running_mean.clone(), live_bn.running_mean.clone()
    model.train()(torch.randn(4, 3, 32, 32))
    assert torch.equal(frozen_bn.running_mean, stats[0])  # eval mode: statistics untouched
    assert not torch.equal(live_bn.running_mean, stats[1])
    proc = cnnkit("train", "--model", "lenet", "--freeze", "9", "--out-dir", tmp_path)
    assert_one_line_error(proc, "--freeze 9", "only 3 stages")


def test_resume_applies_a_new_lr_and_says_so(tmp_path):
    common = dict(model="lenet", dataset="digits", train_limit=128, val_fraction=0.0,
                  batch_size=32, schedule="constant", out_dir=str(tmp_path), name="run", **QUIET)
    train(TrainConfig(epochs=1, lr=3e-3, **common), log=lambda *_: None)
    lines = []
    result = train(TrainConfig(resume=str(tmp_path / "run"), epochs=2, lr=1e-3, quiet=True),
                   log=lines.append)
    assert "resume: --lr 0.003 → 0.001" in lines and "resume: --epochs 1 → 2" in lines
    assert [row["lr"] for row in result.history] == [3e-3, 1e-3]  # applied, not kept
