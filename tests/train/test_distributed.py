"""Data-parallel training with real torchrun processes on 127.0.0.1 (gloo, 2 ranks).

The oracle is the one-process trainer: 2 ranks × batch B step on the same 2B samples as one
process × batch 2B (rank r takes perm[r::2]; its k-th batch perm[r::2][Bk:B(k+1)] and the other
rank's cover perm[2Bk:2B(k+1)]), and DDP's averaged gradient of two mean losses over B is the
mean-loss gradient over 2B. So the weights after N steps must agree within float tolerance.
"""
import copy
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from cnnkit.train import TrainConfig, train
from cnnkit.engine.distributed import setup, sync_batchnorm
from tests.cli._run import cnnkit

B = 16
COMMON = dict(dataset="digits", train_limit=256, val_fraction=0.0, epochs=2, optimizer="sgd",
              lr=0.05, momentum=0.9, schedule="constant", translate=0, precision="fp32",
              deterministic=True, quiet=True, threads=1)
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}

# Each rank trains through the public train() and saves its own in-memory weights.
RANK_SCRIPT = textwrap.dedent("""
    import os, sys, torch
    from cnnkit.train import TrainConfig, train
    config = TrainConfig(**eval(sys.argv[1]))
    result = train(config, log=lambda *_: None)
    torch.save(result.model.state_dict(), sys.argv[2] + f"/rank{os.environ['RANK']}.pt")
    # Skip the interpreter's teardown: in one CI run a rank aborted with "terminate called
    # without an active exception" (a C++ thread destroyed while joinable, most likely at exit;
    # where exactly is not known), failing this test of sync-BN numerics; 3 reruns passed.
    sys.stdout.flush(); sys.stderr.flush(); os._exit(0)
""")


def torchrun(*args, nproc=2, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             f"--nproc-per-node={nproc}", *map(str, args)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def flags(values: dict) -> list[str]:
    out = []
    for key, value in values.items():
        flag = "--" + key.replace("_", "-")
        out += [flag if value else "--no-" + flag[2:]] if isinstance(value, bool) else [flag, value]
    return out


def weights(path) -> dict:
    return torch.load(path, weights_only=True)["models"]["model"]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """One 2-rank run: the run folder and each rank's final weights."""
    tmp = tmp_path_factory.mktemp("ddp")
    (tmp / "rank_train.py").write_text(RANK_SCRIPT)
    config = dict(COMMON, batch_size=B, out_dir=str(tmp), name="ddp")
    proc = torchrun(tmp / "rank_train.py", repr(config), tmp)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    ranks = [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in range(2)]
    return tmp, ranks


def test_two_ranks_match_one_process_with_double_batch(ddp_run, tmp_path):
    tmp, ranks = ddp_run
    single = train(TrainConfig(**COMMON, batch_size=2 * B, out_dir=str(tmp_path), name="one"),
                   log=lambda *_: None)
    expected = weights(single.run_dir / "last.pt")
    got = weights(tmp / "ddp" / "last.pt")
    assert set(got) == set(expected)  # plain module keys, no DDP "module." prefix
    assert single.history[-1]["train_loss"] < single.history[0]["train_loss"]  # it learned
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-4, atol=1e-5)
    ckpt = torch.load(tmp / "ddp" / "last.pt", weights_only=True)
    single_ckpt = torch.load(single.run_dir / "last.pt", weights_only=True)
    assert ckpt["position"]["step"] == single_ckpt["position"]["step"]
    assert len(ckpt["rng"]["cpu"]) == 2 and len(ckpt["position"]["partial"]) == 2
    # Train metrics summed over the ranks: those of the one process over the same samples.
    assert ckpt["history"][-1]["train_loss"] == pytest.approx(single.history[-1]["train_loss"],
                                                             rel=1e-4)


def test_all_ranks_hold_identical_weights(ddp_run):
    _, (rank0, rank1) = ddp_run
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    final = weights(ddp_run[0] / "ddp" / "last.pt")  # and rank 0 saved exactly its own
    assert all(torch.equal(rank0[k], final[k]) for k in final)


def test_only_rank_zero_writes_the_run_folder(ddp_run):
    tmp, _ = ddp_run
    run = tmp / "ddp"
    assert len(list(run.glob("events.out.tfevents.*"))) == 1  # one TensorBoard writer
    for name in ("config.yaml", "metrics.csv", "last.pt", "confusion.png", "predictions.png"):
        assert (run / name).is_file(), name
    rows = (run / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + COMMON["epochs"]


def test_resumed_two_rank_run_matches_uninterrupted(ddp_run):
    """`cnnkit train --nproc 2 --max-epochs 1`, then --resume: the weights of the 2-epoch run."""
    tmp, _ = ddp_run
    config = dict(COMMON, batch_size=B, out_dir=str(tmp), name="part", max_epochs=1)
    first = cnnkit("train", "--nproc", 2, *flags(config), cwd=tmp, timeout=120)
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.count("test accuracy") == 1  # printed by rank 0 only
    assert "stopped by --max-epochs 1" in first.stdout
    path = tmp / "part" / "last.pt"
    assert torch.load(path, weights_only=True)["position"]["epochs_done"] == 1
    resumed = cnnkit("train", "--nproc", 2, "--resume", tmp / "part", "--quiet", cwd=tmp,
                     timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout
    got, expected = weights(path), weights(tmp / "ddp" / "last.pt")
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_sync_bn_two_ranks_match_one_process_with_double_batch(tmp_path):
    """--sync-bn on the CPU: BatchNorm over the global batch, so the 2 × B run (weights and
    running statistics) equals one process normalising batches of 2B. Two steps only: this net
    amplifies float32 rounding ~10× a step (in float64 the two agree to 1e-15 after one step)."""
    (tmp_path / "rank_train.py").write_text(RANK_SCRIPT)
    bn = dict(COMMON, model="simple_cnn", model_args={"drop_rate": 0.0}, epochs=1, lr=0.01,
              train_limit=64,
              out_dir=str(tmp_path))  # no dropout: its masks differ between the two runs
    proc = torchrun(tmp_path / "rank_train.py", repr(dict(bn, batch_size=B, sync_bn=True,
                                                          name="sync")), tmp_path)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    single = train(TrainConfig(**bn, batch_size=2 * B, name="one"), log=lambda *_: None)
    expected, got = weights(single.run_dir / "last.pt"), weights(tmp_path / "sync" / "last.pt")
    assert set(got) == set(expected)  # the converted layers keep BatchNorm's keys
    assert any("running_var" in k for k in expected)
    for key in expected:
        torch.testing.assert_close(got[key].float(), expected[key].float(), rtol=1e-4,
                                   atol=1e-5)


def test_killed_rank_fails_the_job_quickly(tmp_path):
    config = dict(COMMON, batch_size=B, out_dir=str(tmp_path), name="killed", epochs=500)
    start = time.monotonic()
    proc = torchrun("-m", "cnnkit", "train", *flags(config))
    metrics = tmp_path / "killed" / "metrics.csv"
    while not metrics.exists():  # training is under way once an epoch is logged
        assert proc.poll() is None and time.monotonic() - start < 60, proc.communicate()[1]
        time.sleep(0.2)
    workers = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    assert len(workers) == 2
    os.kill(int(workers[1]), signal.SIGKILL)
    killed_at = time.monotonic()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert time.monotonic() - killed_at < 60
    assert "ChildFailedError" in err and "Signal 9 (SIGKILL)" in err, err[-3000:]


def test_without_torchrun_no_process_group_is_made(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    env = setup()
    assert (env.rank, env.world_size, env.active) == (0, 1, False)
    assert not torch.distributed.is_initialized()


def test_two_ranks_accumulating_match_one_process_with_four_times_the_batch(tmp_path):
    """DDP skips the gradient all-reduce (no_sync) on all but the last batch of a step: 2 ranks
    × 2 accumulated batches of B take the steps of one process with batches of 4B."""
    (tmp_path / "rank_train.py").write_text(RANK_SCRIPT)
    config = dict(COMMON, epochs=1, out_dir=str(tmp_path))
    proc = torchrun(tmp_path / "rank_train.py", repr(dict(config, batch_size=B, accumulate=2,
                                                          name="acc")), tmp_path)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    single = train(TrainConfig(**config, batch_size=4 * B, name="one"), log=lambda *_: None)
    expected, got = weights(single.run_dir / "last.pt"), weights(tmp_path / "acc" / "last.pt")
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-4, atol=1e-5)


def test_global_batchnorm_outside_a_group_is_batchnorm():
    torch.manual_seed(0)
    plain = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4))
    converted = sync_batchnorm(copy.deepcopy(plain))
    assert type(converted[1]).__name__ == "GlobalBatchNorm"
    assert converted.state_dict().keys() == plain.state_dict().keys()
    x = torch.randn(8, 1, 6, 6)
    torch.testing.assert_close(converted(x), plain(x))
    torch.testing.assert_close(converted[1].running_var, plain[1].running_var)
