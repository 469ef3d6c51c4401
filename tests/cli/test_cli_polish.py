"""The `cnnkit` command's surface: --version, bare `cnnkit`, help that starts without torch and
shows each default once, the cached `models` table, and a quiet exit into a closed pipe."""
import os
import re
import subprocess
import sys
import tomllib
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from cnnkit.cli.main import COMMANDS
from cnnkit.engine.checkpoint import save_checkpoint
from cnnkit.models import create_model
from cnnkit.train import TrainConfig
from tests.cli._run import cnnkit

ROOT = Path(__file__).resolve().parents[2]


def test_version_is_the_package_version():
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    proc = cnnkit("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"cnnkit {version}"


def test_bare_cnnkit_lists_every_command():
    proc = cnnkit()
    assert proc.returncode == 0, proc.stderr
    for name, (_, help_text) in COMMANDS.items():
        assert re.search(rf"^\s+{re.escape(name)}\b", proc.stdout, re.M), name


@pytest.mark.parametrize("argv", [[], ["--help"], ["models"], ["models", "res*"],
                                  ["summary", "--help"], ["export", "--help"],
                                  ["eval", "--help"]])
def test_help_and_models_table_do_not_import_torch(argv):
    code = ("import sys\nfrom cnnkit.cli.main import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit as exc:\n    assert not exc.code\n"
            "print('torch imported:', 'torch' in sys.modules, file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "torch imported: False" in proc.stderr


def test_help_shows_each_default_once_and_lists_choices():
    proc = cnnkit("train", "--help")
    assert proc.returncode == 0, proc.stderr
    options = re.split(r"\n  (?=-)", proc.stdout)
    for text in options:
        assert text.count("(default") <= 1, " ".join(text.split())
    assert "--device {auto,cpu,cuda}" in proc.stdout  # choices shown, not a bare DEVICE
    assert "--precision {auto,fp32,bf16,fp16}" in proc.stdout
    eval_help = cnnkit("eval", "--help").stdout
    assert "(default: 256)" in eval_help  # a plain argparse default is shown too


def test_models_table_cache_equals_the_registry():
    from cnnkit.cli.models_cmd import cached_table, compute_table
    fresh, cached = compute_table(), cached_table()
    assert set(fresh) == set(cached), ("regenerate: python -m cnnkit.cli.models_cmd "
                                       "--write-cache")
    for name in fresh:
        assert cached[name] == fresh[name], name


def test_models_and_summary_say_lenet_returns_log_probabilities():
    proc = cnnkit("models", "lenet")
    assert proc.returncode == 0 and re.search(r"^lenet .* log_probs$", proc.stdout, re.M)
    resnet = cnnkit("models", "resnet18").stdout
    assert re.search(r"^resnet18 .* logits$", resnet, re.M)
    summary = cnnkit("summary", "lenet").stdout
    assert "output: log_probs" in summary


def _closed_pipe_run(*args, timeout=120):
    """Run `cnnkit ARGS` with stdout a pipe whose reader has already gone (`... | head` once head
    has exited)."""
    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run([sys.executable, "-m", "cnnkit", *map(str, args)], stdout=write,
                              stderr=subprocess.PIPE, text=True, timeout=timeout,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    finally:
        os.close(write)
    return proc


def test_models_into_a_closed_pipe_exits_quietly():
    proc = _closed_pipe_run("models")
    assert proc.returncode == 141 and proc.stderr == "", proc.stderr


def test_eval_into_a_closed_pipe_exits_quietly(tmp_path):
    torch.manual_seed(0)
    kwargs = dict(num_classes=10, in_chans=1)
    config = asdict(TrainConfig(model="lenet", dataset="digits", image_size=28))
    save_checkpoint(tmp_path / "lenet.pt", dict(
        task="classify", config=config, models={"model": create_model("lenet", **kwargs)
                                                .state_dict()},
        spec={"models": {"model": {"name": "lenet", "kwargs": kwargs}}, "infer": "model",
              "classes": [str(i) for i in range(10)], "mean": (0.3,), "std": (0.3,),
              "image_shape": (1, 28, 28)}))
    proc = _closed_pipe_run("eval", tmp_path / "lenet.pt", "--precision", "fp32")
    assert proc.returncode == 141, proc.stderr
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
