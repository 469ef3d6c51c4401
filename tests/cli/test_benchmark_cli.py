"""`cnnkit benchmark`, and the inference modes `cnnkit eval` / `cnnkit predict` choose."""
import re

import numpy as np
import pytest
from PIL import Image

from cnnkit.cli.main import main
from cnnkit.train import TrainConfig, train
from tests.cli._run import cnnkit
from tests.conftest import DATASETS

CIFAR10_TEST_ZIP = DATASETS / "cifar10-jpg" / "test.zip"


@pytest.fixture(scope="module")
def lenet_run(tmp_path_factory):
    """A run folder of LeNet trained for two epochs on digits."""
    out = tmp_path_factory.mktemp("runs")
    train(TrainConfig(dataset="digits", epochs=2, batch_size=64, quiet=True, threads=1,
                      out_dir=str(out), name="lenet"), log=lambda *_: None)
    return out / "lenet"


def run_main(capsys, *args) -> tuple[int, str, str]:
    """`cnnkit ARGS` in this process (main() as the console script calls it): (exit code,
    stdout, stderr). One real subprocess below covers the entry point itself."""
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def assert_one_line_exit_2(result, *fragments) -> None:
    code, _, err = result
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err  # one line, no traceback
    for fragment in fragments:
        assert fragment in err, err


def _table(stdout: str) -> dict[str, list[str]]:
    """mode → the cells of its row in the benchmark table."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("mode "))
    return {line.split()[0]: line.split()[1:] for line in lines[start + 1:] if line.strip()}


def test_benchmark_a_checkpoint_on_its_test_images(lenet_run):
    proc = cnnkit("benchmark", "--checkpoint", lenet_run, "--modes", "fp32", "channels_last",
                  "bf16", "compile", "--iters", "2", "--rounds", "2", "--images", "48")
    assert proc.returncode == 0, proc.stderr
    assert "lenet (trained weights, 431,080 parameters)" in proc.stdout
    assert "top-1 agreement with fp32 on 48 digits test images" in proc.stdout
    rows = _table(proc.stdout)
    assert set(rows) >= {"fp32", "channels_last", "bf16"}
    assert rows["fp32"][1] == "1.00" and rows["fp32"][2] == "1.0000"
    for mode in ("channels_last", "bf16"):
        images_per_s, ratio, agree = map(float, rows[mode][:3])
        assert images_per_s > 0 and ratio > 0
        assert agree >= 0.97  # trained weights: low precision barely moves the predictions
    compiled = next(m for m in rows if m.startswith("compile("))
    if rows[compiled][0] != "skipped:":  # compiled where a C++ toolchain exists
        assert float(rows[compiled][3]) > 0  # the compile time, reported apart
        assert float(rows[compiled][2]) >= 0.97


def test_benchmark_a_random_model_on_cifar_photos(capsys):
    code, out, err = run_main(capsys, "benchmark", "--model", "resnet18", "--model-args",
                              "small_input=true", "--input-size", "3", "32", "32", "--batch-size",
                              "8", "--modes", "fp32", "bf16", "--iters", "1", "--rounds", "1",
                              "--warmup", "1", "--images", "16", "--photos", CIFAR10_TEST_ZIP)
    assert code == 0, err
    assert "resnet18 (random weights" in out and "batch 8 × 3×32×32" in out
    assert f"16 photos from {CIFAR10_TEST_ZIP} resized to 32×32" in out
    assert "weak signal" in out  # random weights: the caveat is printed
    rows = _table(out)
    assert list(rows) == ["fp32", "bf16"]
    assert 0 <= float(rows["bf16"][2]) <= 1


@pytest.mark.parametrize("args, fragments", [
    (["benchmark", "--model", "resnet5x"], ["unknown model 'resnet5x'"]),
    (["benchmark"], ["--model", "--checkpoint"]),
    (["benchmark", "--model", "lenet", "--modes", "int8"], ["--modes", "invalid choice"]),
    (["benchmark", "--checkpoint", "no/such.pt"], ["not found"]),
])
def test_benchmark_bad_input_is_one_line_exit_2(args, fragments, capsys):
    assert_one_line_exit_2(run_main(capsys, *args), *fragments)


# --- --precision in eval and predict ---

def _metrics(stdout: str) -> dict[str, float]:
    line = next(line for line in stdout.splitlines() if " on digits test " in line)
    return {k: float(v) for k, v in re.findall(r"(top-1|top-5|loss) ([\d.]+)", line)}


def test_eval_auto_precision_keeps_the_fp32_accuracy(lenet_run, capsys):
    code, auto, err = run_main(capsys, "eval", lenet_run)
    assert code == 0, err
    code, fp32, err = run_main(capsys, "eval", lenet_run, "--precision", "fp32")
    assert code == 0, err
    assert "inference mode: fp32 (--precision fp32)" in fp32
    chosen = re.search(r"inference mode: (\w+) \(auto.*agreement ([\d.]+) on 360 digits test "
                       r"images\)", auto)
    assert chosen, auto
    mode, agree = chosen.group(1), float(chosen.group(2))
    assert mode in ("fp32", "channels_last", "bf16") and agree >= 0.995
    # Predictions that agree on a fraction `agree` of the images can change the accuracy by at
    # most 1 − agree.
    assert abs(_metrics(auto)["top-1"] - _metrics(fp32)["top-1"]) <= 1 - agree + 1e-9


def test_predict_precision_modes(lenet_run, tmp_path, capsys):
    digit = np.zeros((40, 30), np.uint8)
    digit[8:32, 13:17] = 255  # a vertical bar: a "1"
    paths = [tmp_path / "a.png", tmp_path / "b.png"]
    Image.fromarray(digit).save(paths[0])
    Image.fromarray(255 - digit).save(paths[1])
    code, auto, err = run_main(capsys, "predict", lenet_run, *paths, "--topk", "2")
    assert code == 0, err
    # The agreement check ran on the given images plus 256 of the digits test images.
    assert re.search(r"inference mode: \w+ \(auto.*on 2 given images \+ 256 digits test images",
                     auto), auto
    assert auto.count("%") == 4  # the existing top-k format, unchanged
    code, forced, err = run_main(capsys, "predict", lenet_run, *paths, "--topk", "2",
                                 "--precision", "bf16")
    assert code == 0, err
    assert "inference mode: bf16 (--precision bf16)" in forced
    assert forced.count("%") == 4
