"""The CycleGAN task (Zhu et al. 2017): its losses, the image pool, the learning-rate rule, a tiny
end-to-end run on real horse2zebra photos, resume after SIGKILL (a real subprocess, bit-identical
to the run never interrupted), `translate`, and one-line errors for bad folders."""
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from cnnkit.data.array_dataset import resize_images
from cnnkit.data.unpaired import load_unpaired, to_unit_range
from cnnkit.diffusion.ema import EMA
from cnnkit.models import create_model
from cnnkit.models.cyclegan import PatchDiscriminator, ResnetGenerator
from cnnkit.train.cyclegan import (CycleGanConfig, ImagePool, _training_data,
                                   discriminator_loss, generator_losses, hold_out, keep_each_best,
                                   kept_generators, lr_factor, lsgan_loss, train_cyclegan,
                                   translate_files, with_each_best)
from cnnkit.utils import CnnkitError
from tests.data.test_unpaired import make_unpaired

QUIET = dict(log=lambda *_: None)
# 12 images per domain, 16-pixel crops, 1-block generators, 2-layer PatchGANs: a second per epoch.
TINY = ["--load-size", "20", "--crop-size", "16", "--ngf", "8", "--ndf", "8", "--n-blocks", "1",
        "--n-layers-d", "2", "--pool-size", "4", "--batch-size", "1", "--epochs", "3",
        "--grid-images", "2", "--ema-decay", "0.9", "--quiet", "--threads", "1",
        "--deterministic", "--precision", "fp32", "--no-tensorboard"]


def cyclegan(*args, timeout=300):
    """`cnnkit cyclegan ...` in a real process (through its module until main.py lists it)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "cnnkit", "cyclegan", *map(str, args)],
                          env=env, capture_output=True, text=True, timeout=timeout)


def one_line_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert all(f in lines[0] for f in fragments), lines[0]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_unpaired(tmp_path_factory.mktemp("h2z") / "data")


# --- losses ---

def test_lsgan_and_discriminator_losses_follow_their_definitions():
    pred = torch.tensor([[0.2, 1.5], [-0.3, 1.0]])
    assert lsgan_loss(pred, True) == pytest.approx(((pred - 1) ** 2).mean().item())
    assert lsgan_loss(pred, False) == pytest.approx((pred ** 2).mean().item())

    def constant_d(x):  # D outputs 0.75 on real (first half), 0.25 on fake
        return torch.where(x.mean((1, 2, 3), keepdim=True) > 0, 0.75, 0.25).expand(-1, 1, 2, 2)
    real, fake = torch.ones(3, 3, 4, 4), -torch.ones(3, 3, 4, 4)
    # ½ ((0.75 − 1)² + 0.25²): the discriminator's loss halved, as the authors do.
    assert discriminator_loss(constant_d, real, fake).item() == pytest.approx(0.0625)


def test_identity_and_cycle_losses_vanish_for_identity_generators():
    torch.manual_seed(0)
    d_a, d_b = PatchDiscriminator(ndf=4, n_layers=2), PatchDiscriminator(ndf=4, n_layers=2)
    a, b = torch.rand(2, 3, 16, 16) * 2 - 1, torch.rand(2, 3, 16, 16) * 2 - 1
    same = nn.Identity()
    losses, fake_b, fake_a = generator_losses(same, same, d_a, d_b, a, b)
    assert torch.equal(fake_b, a) and torch.equal(fake_a, b)
    for key in ("idt_a", "idt_b", "cycle_a", "cycle_b"):
        assert losses[key].item() == 0.0, key
    assert losses["adv_ab"] > 0 and losses["g_total"] == losses["adv_ab"] + losses["adv_ba"]
    # A generator that changes its input pays both: −x is off by 2|x| (mean |x| ≈ ½ here).
    flip = lambda x: -x  # noqa: E731
    losses, _, _ = generator_losses(flip, flip, d_a, d_b, a, b, lambda_cycle=10,
                                    lambda_identity=0.5)
    assert losses["idt_a"].item() == pytest.approx(5 * (2 * b.abs()).mean().item(), rel=1e-5)
    assert losses["cycle_a"].item() == 0.0  # −(−a) = a: the cycle closes
    losses, _, _ = generator_losses(flip, flip, d_a, d_b, a, b, lambda_identity=0.0)
    assert losses["idt_a"].item() == 0.0  # switched off


@pytest.mark.parametrize("lambda_b", [None, 2.0])
def test_batched_generator_losses_equal_the_authors_separate_calls(lambda_b):
    """cycle_gan_model.py's backward_G: λ_A weighs cycle A and idt_B, λ_B cycle B and idt_A
    (--lambda_A 10 --lambda_identity 0.5, and --lambda_B 10 or 2)."""
    torch.manual_seed(0)
    g, f = ResnetGenerator(ngf=4, n_blocks=1), ResnetGenerator(ngf=4, n_blocks=1)
    d_a, d_b = PatchDiscriminator(ndf=4, n_layers=2), PatchDiscriminator(ndf=4, n_layers=2)
    a, b = torch.rand(2, 3, 16, 16) * 2 - 1, torch.rand(2, 3, 16, 16) * 2 - 1
    losses, _, _ = generator_losses(g, f, d_a, d_b, a, b, lambda_cycle_b=lambda_b)
    fake_b, fake_a = g(a), f(b)  # the authors' forward and backward_G, one call each
    weight_b = 10 if lambda_b is None else lambda_b
    expected = {"adv_ab": F.mse_loss(d_b(fake_b), torch.ones_like(d_b(fake_b))),
                "adv_ba": F.mse_loss(d_a(fake_a), torch.ones_like(d_a(fake_a))),
                "cycle_a": 10 * F.l1_loss(f(fake_b), a),
                "cycle_b": weight_b * F.l1_loss(g(fake_a), b),
                "idt_a": 0.5 * weight_b * F.l1_loss(g(b), b), "idt_b": 5 * F.l1_loss(f(a), a)}
    for key, value in expected.items():
        assert losses[key].item() == pytest.approx(value.item(), rel=1e-5), key


def test_learning_rate_is_constant_then_decays_linearly():
    # The paper: 100 epochs at 2e-4, then 100 decaying (the authors' lambda_rule).
    factors = [lr_factor(e, 200, 100) for e in range(200)]
    assert factors[:100] == [1.0] * 100
    steps = [factors[e] - factors[e + 1] for e in range(99, 199)]
    assert steps == pytest.approx([1 / 101] * 100)
    assert factors[-1] == pytest.approx(1 / 101)


# --- the image pool ---

def test_pool_fills_then_returns_an_old_image_half_the_time():
    pool = ImagePool(5, seed=0)
    first = [torch.full((1, 2, 2), float(i)) for i in range(5)]
    for image in first:  # filling: every image passes through and is kept
        assert torch.equal(pool.query(image[None])[0], image)
    assert [img[0, 0, 0].item() for img in pool.images] == [0, 1, 2, 3, 4]
    old = 0
    for i in range(5, 2005):
        stored = {img[0, 0, 0].item() for img in pool.images}
        out = pool.query(torch.full((1, 1, 2, 2), float(i)))[0, 0, 0, 0].item()
        if out != i:
            assert out in stored  # an earlier image, and the new one took its place
            assert i in {img[0, 0, 0].item() for img in pool.images}
            old += 1
    assert abs(old / 2000 - 0.5) < 0.04  # p = ½: 4 standard deviations ≈ 0.045
    assert torch.equal(ImagePool(0).query(torch.ones(3, 1, 2, 2)), torch.ones(3, 1, 2, 2))


def test_pool_state_round_trip_draws_the_same():
    pool = ImagePool(3, seed=7)
    for i in range(10):
        pool.query(torch.full((2, 1, 2, 2), float(i)))
    twin = ImagePool(3, seed=99)
    twin.load_state_dict(pool.state_dict())
    for i in range(10, 30):
        x = torch.full((2, 1, 2, 2), float(i))
        assert torch.equal(pool.query(x), twin.query(x))


# --- the task ---

def test_tiny_end_to_end_run_writes_its_folder(data, tmp_path):
    config = CycleGanConfig(data_dir=str(data), out_dir=str(tmp_path), name="run", load_size=20,
                            crop_size=16, ngf=8, ndf=8, n_blocks=1, n_layers_d=2, pool_size=4,
                            epochs=2, grid_images=2, threads=1, quiet=True, tensorboard=False,
                            upsample="resize")
    result = train_cyclegan(config, **QUIET)
    files = {p.name for p in result.run_dir.iterdir()}
    assert {"config.yaml", "metrics.csv", "last.pt", "losses.png", "translations_epoch001.png",
            "translations_epoch002.png"} <= files
    assert len(result.history) == 2 and result.history[-1]["lr"] == pytest.approx(1e-4)
    assert all(torch.isfinite(torch.tensor(row["g_total"])) for row in result.history)
    ckpt = torch.load(result.run_dir / "last.pt", weights_only=True)
    assert ckpt["task"] == "cyclegan" and set(ckpt["models"]) == {
        "generator_ab", "generator_ba", "discriminator_a", "discriminator_b"}
    assert [len(ckpt["per_rank"][f"pool_{d}"][0]["images"]) for d in "ab"] == [4, 4]  # full
    assert ckpt["spec"]["models"]["generator_ab"]["kwargs"]["upsample"] == "resize"
    # (out, in, 3, 3): a Conv2d; a ConvTranspose2d stores (in, out, 3, 3) = (32, 16, 3, 3)
    assert ckpt["models"]["generator_ab"]["up.0.conv.weight"].shape == (16, 32, 3, 3)
    with Image.open(result.run_dir / "translations_epoch002.png") as grid:
        assert grid.size[0] > 200


def test_domain_b_trains_at_its_own_scale(data, tmp_path):
    lines = []
    config = CycleGanConfig(data_dir=str(data), out_dir=str(tmp_path), name="run", load_size=24,
                            load_size_b=16, crop_size=16, ngf=4, ndf=4, n_blocks=1, n_layers_d=2,
                            pool_size=2, epochs=1, train_limit=4, grid_images=1, threads=1,
                            quiet=True, tensorboard=False)
    train_cyclegan(config, log=lines.append)
    assert any("4 + 4 images 24×24 + 16×16, crops 16" in line for line in lines)
    # B larger than A: its photos are resized from the files, not enlarged from A's 16 px
    run = SimpleNamespace(env=SimpleNamespace(rank=0, world_size=1), device=torch.device("cpu"))
    config = replace(config, load_size=16, load_size_b=24)
    loader = _training_data(config, run)[0]
    files = load_unpaired(data, "train", limit=4)
    assert torch.equal(loader.dataset.a, resize_images(files.a, 16))
    assert torch.equal(loader.dataset.b, resize_images(files.b, 24))
    assert loader.dataset.b_for_discriminator is None
    # --d-load-size-b: D_B's real B at a third scale, from the files, held out alike
    lines.clear()
    config = replace(config, d_load_size_b=20, out_dir=str(tmp_path / "d"))
    train_cyclegan(config, log=lines.append)
    assert any("4 + 4 images 16×16 + 24×24 (D_B's real B 20 px)" in line for line in lines)
    loader = _training_data(config, run)[0]
    assert torch.equal(loader.dataset.b_for_discriminator, resize_images(files.b, 20))
    train, held = hold_out(replace(config, val_images=1), loader.dataset)
    assert torch.equal(train.b_for_discriminator, resize_images(files.b[:3], 20))
    assert torch.equal(held["val"].b, files.b[3:])  # judged on the photos' own size


def _weights(ckpt) -> dict:
    """Every saved tensor of the four networks and of the generators' averages, by name."""
    named = {(part, key): value for part, state in ckpt["models"].items()
             for key, value in state.items()}
    named.update({(f"ema {part}", key): value for part, ema in ckpt["ema"].items()
                  for key, value in ema["model"].items()})
    return named


@torch.no_grad()
def _outputs(ckpt, images) -> dict:
    """Each network's output on `images`, with its trained and (generators) averaged weights."""
    out = {}
    for part, arch in ckpt["spec"]["models"].items():
        states = {part: ckpt["models"][part]}
        if part in ckpt["ema"]:
            states[f"ema {part}"] = ckpt["ema"][part]["model"]
        for name, state in states.items():
            net = create_model(arch["name"], **arch["kwargs"])
            net.load_state_dict(state)
            out[name] = net.eval()(images)
    return out


def _same_run(a_dir, b_dir):
    a, b = (torch.load(d / "last.pt", weights_only=True) for d in (a_dir, b_dir))
    assert a["position"] == b["position"]
    weights_a, weights_b = _weights(a), _weights(b)
    assert weights_a.keys() == weights_b.keys()
    for name, value in weights_a.items():
        assert torch.equal(value, weights_b[name]), name
    for d in "ab":
        for pa, pb in zip(a["per_rank"][f"pool_{d}"], b["per_rank"][f"pool_{d}"], strict=True):
            assert torch.equal(pa["rng"], pb["rng"])
            assert all(torch.equal(x, y) for x, y in zip(pa["images"], pb["images"], strict=True))
    strip = ("epoch_s", "img_per_s")
    assert ([{k: v for k, v in r.items() if k not in strip} for r in a["history"]]
            == [{k: v for k, v in r.items() if k not in strip} for r in b["history"]])


def test_sigkill_then_resume_is_bit_identical(data, tmp_path):
    common = [*TINY, "--data-dir", data, "--out-dir", tmp_path]
    whole = cyclegan("train", *common, "--name", "whole")
    assert whole.returncode == 0, whole.stderr
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    victim = subprocess.Popen([sys.executable, "-m", "cnnkit", "cyclegan", "train",
                               *map(str, common), "--name", "killed"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "killed" / "metrics.csv"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and victim.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=60)
    assert victim.returncode == -signal.SIGKILL
    done = torch.load(tmp_path / "killed" / "last.pt", weights_only=True)["position"]
    assert done["epochs_done"] < 3
    resumed = cyclegan("train", "--resume", tmp_path / "killed", "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout
    _same_run(tmp_path / "whole", tmp_path / "killed")
    ema = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)["ema"]
    assert set(ema) == {"generator_ab", "generator_ba"} and ema["generator_ab"]["decay"] == 0.9
    # translate: the run's generators on image files, at their own size (a multiple of 4)
    inputs = sorted((data / "testA").iterdir())[:2]
    proc = cyclegan("translate", tmp_path / "whole", *inputs, "--direction", "BtoA", "-o",
                    tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    for path in inputs:
        with Image.open(tmp_path / "out" / f"{path.stem}.png") as out:
            assert out.size == (128, 128) and out.mode == "RGB"


def test_stop_mid_epoch_keeps_the_pools_and_resumes_exactly(data, tmp_path):
    common = dict(data_dir=str(data), out_dir=str(tmp_path), load_size=20, crop_size=16, ngf=8,
                  ndf=8, n_blocks=1, n_layers_d=2, pool_size=2, epochs=1, grid_images=1,
                  threads=1, deterministic=True, precision="fp32", quiet=True, tensorboard=False)
    train_cyclegan(CycleGanConfig(name="whole", **common), **QUIET)
    part = train_cyclegan(CycleGanConfig(name="part", max_time=1e-9, **common), **QUIET)
    ckpt = torch.load(part.run_dir / "last.pt", weights_only=True)
    assert (ckpt["position"]["epochs_done"], ckpt["position"]["epoch_step"]) == (0, 1)
    assert len(ckpt["per_rank"]["pool_a"][0]["images"]) == 1  # one generated image so far
    # data_dir given again (the same): the engine now resolves a given data_dir before comparing
    train_cyclegan(CycleGanConfig(resume=str(part.run_dir), data_dir=str(data), quiet=True),
                   **QUIET)
    _same_run(tmp_path / "whole", part.run_dir)


def test_two_ranks_match_one_process_with_double_batch(data, tmp_path):
    """`cnnkit cyclegan train --nproc 2` (real torchrun, gloo): rank r takes its slice of each
    global batch and the gradients are averaged over the ranks, so 2 ranks × batch 1 train as
    one process × batch 2 (no pools: each rank's pool draws its own history); stopped after an
    epoch and resumed, the 2-rank run is bit-identical to an uninterrupted one."""
    common = dict(data_dir=str(data), out_dir=str(tmp_path), load_size=20, crop_size=16, ngf=8,
                  ndf=8, n_blocks=1, n_layers_d=2, pool_size=0, epochs=2, grid_images=1,
                  ema_decay=0.5, threads=1, deterministic=True, precision="fp32", quiet=True,
                  tensorboard=False)
    one = train_cyclegan(CycleGanConfig(name="one", batch_size=2, max_epochs=1, **common),
                         **QUIET)
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in common.items() if not isinstance(v, bool)]
    flags += ["--deterministic", "--quiet", "--no-tensorboard", "--batch-size", 1]
    for args in (["--max-epochs", 1, "--name", "two"], ["--name", "whole"]):
        proc = cyclegan("train", "--nproc", 2, *flags, *args)
        assert proc.returncode == 0, proc.stderr[-2000:]
    a, b = (torch.load(d / "last.pt", weights_only=True) for d in (one.run_dir, tmp_path / "two"))
    assert a["position"]["step"] == b["position"]["step"] == 6  # 12 images, 2 per step
    assert len(b["per_rank"]["pool_a"]) == 2 and len(a["per_rank"]["pool_a"]) == 1
    assert list(b["history"][0]) == list(a["history"][0])  # metrics.csv's columns, in order
    assert b["history"][0]["g_total"] == pytest.approx(a["history"][0]["g_total"], rel=1e-6)
    # Compared as functions, loosely: Adam turns rounding noise in gradients near 0 (a bias that
    # instance norm cancels has a true gradient of 0) into ±lr steps. Measured after this epoch
    # (without the average): outputs within 0.007 with the gradients averaged, 0.12–0.35 apart
    # without.
    photos = to_unit_range(resize_images(load_unpaired(data, "test").a, 16))
    outputs_a, outputs_b = _outputs(a, photos), _outputs(b, photos)
    assert outputs_a.keys() == outputs_b.keys() and len(outputs_a) == 6
    for name, value in outputs_a.items():
        torch.testing.assert_close(outputs_b[name], value, rtol=0, atol=0.02, msg=name)
    resumed = cyclegan("train", "--nproc", 2, "--resume", tmp_path / "two", "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert resumed.stdout.count("trained 2 epochs") == 1  # rank 0's line only
    _same_run(tmp_path / "whole", tmp_path / "two")


# --- bad input: one line, exit 2 ---

def _broken(tmp_path, data, how):
    root = tmp_path / how
    shutil.copytree(data, root)
    if how == "missing":
        shutil.rmtree(root / "trainB")
    elif how == "empty":
        for p in (root / "trainB").iterdir():
            p.unlink()
    elif how == "not-an-image":
        (root / "trainA" / "labels.csv").write_text("a,b\n")
    elif how == "sizes":
        Image.new("RGB", (100, 90)).save(root / "trainB" / "odd.png")
    return root


@pytest.mark.parametrize("how,fragments", [
    ("missing", ["trainB is missing", "trainA, trainB, testA, testB"]),
    ("empty", ["trainB holds no images"]),
    ("not-an-image", ["labels.csv is not an image file"]),
    ("sizes", ["odd.png is 90×100 but", "is 128×128", "--load-size"]),
])
def test_bad_folders_are_named_in_the_error(data, tmp_path, how, fragments):
    root = _broken(tmp_path, data, how)
    config = CycleGanConfig(data_dir=str(root), load_size=0, out_dir=str(tmp_path), quiet=True,
                            tensorboard=False)
    with pytest.raises(CnnkitError) as err:
        train_cyclegan(config, **QUIET)
    assert all(f in str(err.value) for f in fragments) and "\n" not in str(err.value)


def test_bad_input_on_the_command_line_is_one_line_and_exit_2(data, tmp_path):
    root = _broken(tmp_path, data, "sizes")
    proc = cyclegan("train", "--data-dir", root, "--load-size", "0", "--out-dir", tmp_path,
                    "--quiet")
    one_line_error(proc, "odd.png is 90×100 but")
    one_line_error(cyclegan("train", "--crop-size", "18"), "--crop-size must be a multiple of 4")
    one_line_error(cyclegan("train", "--load-size-b", "60"),
                   "--crop-size 64 is larger than --load-size-b 60")
    one_line_error(cyclegan("train", "--d-load-size-b", "48"),
                   "--crop-size 64 is larger than --d-load-size-b 48")
    one_line_error(cyclegan("train", "--min-load-size", "60"),
                   "--min-load-size 60 needs a --load-size and must lie between --crop-size 64")
    one_line_error(cyclegan("train", "--lambda-cycle-b", "-1"),
                   "--lambda-cycle-b must be 0 or more, got -1")
    with pytest.raises(CnnkitError, match="mnist is a classify data set"):
        train_cyclegan(CycleGanConfig(dataset="mnist", out_dir=str(tmp_path)), **QUIET)
    with pytest.raises(CnnkitError, match="checkpoint not found"):
        translate_files(tmp_path / "nothing", [tmp_path / "x.png"], tmp_path / "out")


def test_each_generator_keeps_the_epoch_best_for_its_own_direction():
    """--choose each: G keeps its weights (and average) from the epoch of the lowest held-out
    horse → zebra score, F from the lowest zebra → horse; a NaN score never wins; best.pt holds
    that pair with the rest of the latest epoch."""
    nets = {"generator_ab": nn.Linear(2, 2), "generator_ba": nn.Linear(2, 2)}
    emas = {part: EMA(net, decay=0.5) for part, net in nets.items()}
    scores = [(3.0, 1.0), (1.0, 2.0), (2.0, float("nan")), (1.5, 0.5)]  # (ab, ba) per epoch
    kept, seen = {}, []
    for epoch, (ab, ba) in enumerate(scores, start=1):
        for net in nets.values():  # a "training epoch": every weight moves
            with torch.no_grad():
                for w in net.parameters():
                    w.add_(torch.randn_like(w))
        for ema in emas.values():
            ema.update()
        seen.append({part: (net.weight.clone(), emas[part].model.weight.clone())
                     for part, net in nets.items()})
        row = {"val_fid_ratio_ab": ab, "val_fid_ratio_ba": ba}
        improved = keep_each_best(kept, row, epoch, nets, emas)
        assert improved == {1: ["generator_ab", "generator_ba"], 2: ["generator_ab"], 3: [],
                            4: ["generator_ba"]}[epoch]
    assert (kept["generator_ab"]["epoch"], kept["generator_ba"]["epoch"]) == (2, 4)
    for part, epoch in (("generator_ab", 2), ("generator_ba", 4)):
        weight, averaged = seen[epoch - 1][part]
        assert torch.equal(kept[part]["model"]["weight"], weight)
        assert torch.equal(kept[part]["ema"]["model"]["weight"], averaged)
    assert not torch.equal(kept["generator_ab"]["model"]["weight"],
                           nets["generator_ab"].weight)  # a copy, not the live tensor
    # The grid of best.pt (translations_best.png) draws copies holding the kept averages;
    # a generator not kept yet is drawn as it is.
    shown = [emas["generator_ab"].model, emas["generator_ba"].model]
    drawn = kept_generators(kept, shown)
    for net, part, epoch in zip(drawn, ("generator_ab", "generator_ba"), (2, 4)):
        assert torch.equal(net.weight, seen[epoch - 1][part][1])
    assert drawn[0] is not shown[0] and not torch.equal(shown[0].weight, drawn[0].weight)
    assert kept_generators({"generator_ab": kept["generator_ab"]}, shown)[1] is shown[1]
    state = {"models": {p: n.state_dict() for p, n in nets.items()} | {"discriminator_a": {}},
             "ema": {p: e.state_dict() for p, e in emas.items()},
             "extra": {"each_best": kept}, "best": {"value": None}}
    best = with_each_best(state, kept)
    assert best["models"]["generator_ab"] is kept["generator_ab"]["model"]
    assert best["ema"]["generator_ba"] is kept["generator_ba"]["ema"]
    assert "each_best" not in best["extra"] and "each_best" in state["extra"]
    assert best["best"]["each"]["generator_ab"] == {"epoch": 2, "value": 1.0,
                                                    "metric": "val_fid_ratio_ab"}
