"""The run engine through real processes: SIGKILL, SIGTERM and --max-time, then --resume, for the
classifier, DDPM and DCGAN tasks; the oracle is the same run never interrupted (bit-identical
weights and history). Also the resume rule and the checkpoint envelope that every command reads.
"""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from cnnkit.engine.checkpoint import load_checkpoint
from cnnkit.train import TrainConfig, train
from cnnkit.train.dcgan import GanConfig, train_gan
from tests.cli._run import assert_one_line_error, cnnkit

QUIET = dict(log=lambda *_: None)
# Each task on the embedded digits, small enough for a test, deterministic on one thread.
TASKS = {
    "classify": ["train", "--dataset", "digits", "--batch-size", "8", "--epochs", "3"],
    "ddpm": ["diffusion", "train", "--dataset", "digits", "--batch-size", "32", "--epochs", "2",
             "--timesteps", "20", "--base-channels", "8", "--channel-mults", "1,2",
             "--attention-resolutions", "", "--sample-n", "4", "--sample-steps", "2",
             "--val-images", "64"],
    "dcgan": ["gan", "train", "--dataset", "digits", "--batch-size", "16", "--epochs", "2",
              "--ngf", "8", "--ndf", "8", "--grid-size", "8"],
}
TRAIN_COMMAND = {"classify": ["train"], "ddpm": ["diffusion", "train"], "dcgan": ["gan", "train"]}
COMMON = ["--quiet", "--threads", "1", "--deterministic", "--precision", "fp32",
          "--no-tensorboard"]


def _args(task, out, name):
    return [*TASKS[task], *COMMON, "--out-dir", out, "--name", name]


def _interrupt(task, out, name, sig) -> subprocess.CompletedProcess:
    """Start a run, send `sig` once its first epoch is written, and wait for the process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    victim = subprocess.Popen([sys.executable, "-m", "cnnkit", *map(str, _args(task, out, name))],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / name / "metrics.csv"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and victim.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.02)
    time.sleep(0.1)  # into the second epoch
    victim.send_signal(sig)
    stdout, stderr = victim.communicate(timeout=120)
    return subprocess.CompletedProcess(victim.args, victim.returncode, stdout, stderr)


def _same_run(a_path, b_path):
    a, b = (torch.load(p / "last.pt", weights_only=True) for p in (a_path, b_path))
    assert a["position"] == b["position"]
    weights = [(f"models.{part}", a["models"][part], b["models"][part]) for part in a["models"]]
    weights += [(f"ema.{part}", a["ema"][part]["model"], b["ema"][part]["model"])
                for part in a["ema"]]  # DDPM's weight average
    for where, mine, theirs in weights:
        for key, value in mine.items():
            assert torch.equal(value, theirs[key]), f"{where}.{key}"
    assert a["extra"] == b["extra"]  # e.g. the GAN's per-step losses
    strip = [{k: v for k, v in row.items() if k not in ("epoch_s", "img_per_s")}
             for row in a["history"]]
    assert strip == [{k: v for k, v in row.items() if k not in ("epoch_s", "img_per_s")}
                     for row in b["history"]]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """Each task's run from start to end, never interrupted: the oracle."""
    out = tmp_path_factory.mktemp("whole")
    for task in TASKS:
        proc = cnnkit(*_args(task, out, task))
        assert proc.returncode == 0, proc.stderr
    return out


@pytest.mark.parametrize("task", list(TASKS))
def test_sigkill_mid_epoch_then_resume_is_bit_identical(task, uninterrupted, tmp_path):
    killed = _interrupt(task, tmp_path, "killed", signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    before = torch.load(tmp_path / "killed" / "last.pt", weights_only=True)["position"]
    assert before["epochs_done"] < int(TASKS[task][TASKS[task].index("--epochs") + 1])
    resumed = cnnkit(*TRAIN_COMMAND[task], "--resume", tmp_path / "killed", "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout
    _same_run(uninterrupted / task, tmp_path / "killed")


@pytest.mark.parametrize("task", ["classify", "ddpm"])
def test_sigterm_writes_a_resumable_checkpoint(task, uninterrupted, tmp_path):
    stopped = _interrupt(task, tmp_path, "term", signal.SIGTERM)
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr
    lines = stopped.stderr.strip().splitlines()
    assert len(lines) == 1 and "stopped by SIGTERM" in lines[0] and "--resume" in lines[0], lines
    position = torch.load(tmp_path / "term" / "last.pt", weights_only=True)["position"]
    assert position["epochs_done"] >= 1  # the checkpoint of the step the signal found
    resumed = cnnkit(*TRAIN_COMMAND[task], "--resume", tmp_path / "term", "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    _same_run(uninterrupted / task, tmp_path / "term")


def test_dcgan_max_time_stops_mid_epoch_and_resumes_exactly(tmp_path):
    common = dict(dataset="digits", batch_size=256, ngf=8, ndf=8, grid_size=10, epochs=2,
                  threads=1, deterministic=True, precision="fp32", quiet=True,
                  tensorboard=False, out_dir=str(tmp_path))
    whole = train_gan(GanConfig(name="whole", **common), **QUIET)
    part = train_gan(GanConfig(name="part", max_time=1e-9, **common), **QUIET)
    position = torch.load(part.run_dir / "last.pt", weights_only=True)["position"]
    assert (position["epochs_done"], position["step"], position["epoch_step"]) == (0, 1, 1)
    assert position["partial"][0]["seen"] == 256
    train_gan(GanConfig(resume=str(part.run_dir), quiet=True), **QUIET)  # the limit not kept
    _same_run(whole.run_dir, part.run_dir)


# --- the resume rule ---

def _digits(tmp_path, **overrides):
    return TrainConfig(**{**dict(dataset="digits", train_limit=256, val_fraction=0.0,
                                 epochs=1, batch_size=32, quiet=True, threads=1,
                                 out_dir=str(tmp_path), name="run", tensorboard=False),
                          **overrides})


def test_resume_applies_given_flags_and_refuses_fixed_ones(tmp_path):
    train(_digits(tmp_path), **QUIET)
    lines = []
    result = train(TrainConfig(resume=str(tmp_path / "run"), epochs=2, quiet=True),
                   log=lines.append)
    assert len(result.history) == 2
    assert "resume: --epochs 1 → 2" in lines
    with pytest.raises(Exception, match="--batch-size 16 differs from the run's 32"):
        train(TrainConfig(resume=str(tmp_path / "run"), batch_size=16), **QUIET)
    proc = cnnkit("train", "--resume", tmp_path / "run", "--model", "resnet18")
    assert_one_line_error(proc, "--model resnet18 differs", "start a new run")


def test_device_cuda_without_a_gpu_is_a_one_line_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present here")
    proc = cnnkit("train", "--dataset", "digits", "--device", "cuda", "--out-dir", tmp_path)
    assert_one_line_error(proc, "--device cuda", "no CUDA device")


# --- one envelope, read by every command ---

def test_every_command_names_the_task_of_a_foreign_checkpoint(uninterrupted, tmp_path):
    ddpm, gan = uninterrupted / "ddpm", uninterrupted / "dcgan"
    for command in (["eval", ddpm], ["predict", ddpm, "x.png"], ["export", gan],
                    ["visualize", "filters", ddpm], ["benchmark", "--checkpoint", gan],
                    ["generate-eval", "--classifier", ddpm, "--real-floor-only"]):
        proc = cnnkit(*command, cwd=tmp_path)
        task = "ddpm" if ddpm in command else "dcgan"
        assert_one_line_error(proc, f"is a {task} checkpoint", "use `cnnkit sample`")
    proc = cnnkit("sample", uninterrupted / "classify", "-o", tmp_path / "s.png")
    assert_one_line_error(proc, "is a classify checkpoint", "`cnnkit eval`")
    proc = cnnkit("diffusion", "train", "--resume", gan)
    assert_one_line_error(proc, "is a dcgan checkpoint", "`cnnkit diffusion train`")
    for run in (ddpm, gan):  # `sample` takes both generative tasks, with the same flags
        proc = cnnkit("sample", run, "--n", "4", "--seed", "1", "-o", tmp_path / "g.png",
                      "--save", tmp_path / "s.pt")
        assert proc.returncode == 0, proc.stderr
        assert torch.load(tmp_path / "s.pt", weights_only=True).shape == (4, 1, 28, 28)


def test_checkpoints_from_before_the_envelope(uninterrupted, tmp_path):
    """An old (pre-format) classifier checkpoint still evaluates, but cannot be resumed; a dict
    that is no cnnkit checkpoint at all is a one-line error."""
    new = load_checkpoint(uninterrupted / "classify")
    arch = new["spec"]["models"]["model"]
    legacy = {"model": new["models"]["model"], "model_name": arch["name"],
              "model_kwargs": arch["kwargs"], "classes": new["spec"]["classes"],
              "mean": new["spec"]["mean"], "std": new["spec"]["std"],
              "image_size": new["spec"]["image_shape"], "config": new["config"],
              "epoch": 3, "step": 100, "version": "0.1.0"}
    (tmp_path / "old").mkdir()
    torch.save(legacy, tmp_path / "old" / "last.pt")
    evaluated = cnnkit("eval", tmp_path / "old", "--precision", "fp32")
    assert evaluated.returncode == 0, evaluated.stderr
    assert "top-1" in evaluated.stdout
    assert_one_line_error(cnnkit("train", "--resume", tmp_path / "old"), "predates")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "junk.pt")
    assert_one_line_error(cnnkit("eval", tmp_path / "junk.pt"), "not a cnnkit checkpoint")
    torch.save({**new, "format_version": 99}, tmp_path / "future.pt")
    assert_one_line_error(cnnkit("eval", tmp_path / "future.pt"), "newer than this cnnkit")
