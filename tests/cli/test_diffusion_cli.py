"""`cnnkit diffusion train|sample` end to end on the embedded digits (28×28), with a tiny U-Net."""
import numpy as np
import pytest
import torch
from PIL import Image

from cnnkit.engine.checkpoint import load_checkpoint
from cnnkit.train.ddpm import DiffusionConfig, train_diffusion
from tests.cli._run import assert_one_line_error, cnnkit

TINY = ["--base-channels", "8", "--channel-mults", "1,2", "--num-res-blocks", "1",
        "--attention-resolutions", "14", "--sample-steps", "5", "--sample-n", "8"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    proc = cnnkit("diffusion", "train", "--dataset", "digits", "--epochs", "1", "--timesteps", "50",
                  "--batch-size", "64", "--quiet", *TINY, "--out-dir", out, "--name", "tiny")
    assert proc.returncode == 0, proc.stderr
    return out / "tiny"


def test_train_writes_the_run_folder(run_dir):
    for name in ("config.yaml", "metrics.csv", "last.pt", "best.pt", "samples_epoch001.png"):
        assert (run_dir / name).is_file(), name
    lines = (run_dir / "metrics.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,step,loss,lr,val_loss") and len(lines) == 2
    ckpt = load_checkpoint(run_dir, task="ddpm")
    assert {"models", "ema", "optimizers", "rng", "position", "config", "spec"} <= set(ckpt)
    assert ckpt["position"]["step"] == 1437 // 64 and ckpt["position"]["epochs_done"] == 1
    assert ckpt["best"]["metric"] == "val_loss" and ckpt["best"]["value"] > 0


def test_sample_writes_a_non_blank_png(run_dir, tmp_path):
    out = tmp_path / "grid.png"
    proc = cnnkit("diffusion", "sample", run_dir, "--n", "4", "--steps", "5", "-o", out)
    assert proc.returncode == 0, proc.stderr
    pixels = np.asarray(Image.open(out).convert("L"))
    # A titled figure, enlarged to a readable width (viz.grid: at least 600 px), 1 row of 4.
    assert pixels.shape[1] >= 600 and pixels.shape[1] > 3 * pixels.shape[0] / 2
    assert pixels.std() > 0  # not blank


def test_sample_with_dpm_solver(run_dir, tmp_path):
    proc = cnnkit("diffusion", "sample", run_dir, "--n", "4", "--sampler", "dpm++", "--steps",
                  "4", "-o", tmp_path / "grid.png", "--save", tmp_path / "samples.pt")
    assert proc.returncode == 0, proc.stderr
    assert "DPM-Solver++(2M) 4 steps" in proc.stdout
    assert torch.load(tmp_path / "samples.pt", weights_only=True).float().std() > 0


def test_sample_in_batches_saves_uint8_samples(run_dir, tmp_path):
    saved = tmp_path / "samples.pt"
    proc = cnnkit("diffusion", "sample", run_dir, "--n", "6", "--batch-size", "4", "--steps", "3",
                  "--precision", "bf16", "--save", saved, "-o", tmp_path / "grid.png")
    assert proc.returncode == 0, proc.stderr
    images = torch.load(saved, weights_only=True)  # unconditional: a bare tensor
    assert images.dtype == torch.uint8 and images.shape == (6, 1, 28, 28)
    assert images[4:].float().std() > 0  # the second batch was denoised too
    assert "ms per image" in proc.stdout


def test_resume_of_a_finished_run_is_a_no_op(run_dir):
    before = (run_dir / "last.pt").read_bytes()
    proc = cnnkit("diffusion", "train", "--resume", run_dir, "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "finished" in proc.stdout
    assert (run_dir / "last.pt").read_bytes() == before


@pytest.mark.parametrize("args, fragment", [
    (["--class", "3"], "class-conditional"),
    (["--guidance", "2"], "class-conditional"),
    (["--sampler", "ddpm", "--steps", "5"], "DDIM options"),
    (["--sampler", "dpm++", "--eta", "0.5"], "DDIM option"),
    (["--steps", "51"], "1..50"),
])
def test_sample_errors_are_one_line(run_dir, tmp_path, args, fragment, capsys):
    from cnnkit.cli.main import main  # in-process: each case costs no interpreter start
    with pytest.raises(SystemExit) as exc:
        main(["diffusion", "sample", str(run_dir), "-o", str(tmp_path / "g.png"), *args])
    assert exc.value.code == 2
    error = capsys.readouterr().err.strip()
    assert fragment in error and "\n" not in error


def test_missing_checkpoint_is_a_one_line_error(tmp_path):
    proc = cnnkit("diffusion", "sample", tmp_path / "nope", "-o", tmp_path / "g.png")
    assert_one_line_error(proc, "checkpoint not found")


def test_stopped_mid_epoch_run_resumes_exactly(tmp_path):
    """Class-conditional, one epoch straight vs. stopped by --max-time after one step and
    resumed: bit-identical weights, EMA, and the same epoch loss."""
    common = dict(dataset="digits", epochs=1, timesteps=50, batch_size=256, class_conditional=True,
                  base_channels=8, channel_mults="1,2", num_res_blocks=1,
                  attention_resolutions="", sample_steps=2, sample_n=10, quiet=True,
                  out_dir=str(tmp_path))
    silent = dict(log=lambda *a: None)
    straight = train_diffusion(DiffusionConfig(name="straight", **common), **silent)
    stopped = train_diffusion(DiffusionConfig(name="stopped", max_time=1e-9, **common), **silent)
    position = load_checkpoint(stopped)["position"]  # stopped after its first step, mid-epoch
    assert (position["epochs_done"], position["step"], position["epoch_step"]) == (0, 1, 1)
    assert position["partial"][0]["seen"] == 256  # that step's images, counted for the epoch
    train_diffusion(DiffusionConfig(resume=str(stopped)), **silent)  # no limit: taken anew
    a, b = load_checkpoint(straight), load_checkpoint(stopped)
    assert a["position"]["step"] == b["position"]["step"] == 1437 // 256
    for key in a["models"]["model"]:
        assert torch.equal(a["models"]["model"][key], b["models"]["model"][key]), key
        assert torch.equal(a["ema"]["model"]["model"][key], b["ema"]["model"]["model"][key]), key
    assert len(b["history"]) == 1
    assert a["history"][0]["loss"] == b["history"][0]["loss"]  # over the whole epoch, both runs
