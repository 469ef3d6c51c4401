"""The CLI generated from a config dataclass: list-valued fields (`--judge A B C`)."""
import pytest

from cnnkit.cli._args import OneLineParser, add_config_arguments, config_from_args
from cnnkit.train.cyclegan import CycleGanConfig
from cnnkit.utils import CnnkitError


def _parse(*argv):
    parser = OneLineParser(prog="cnnkit cyclegan train")
    add_config_arguments(parser, CycleGanConfig)
    return config_from_args(parser.parse_args(argv), CycleGanConfig)


def test_a_list_field_takes_several_values_and_keeps_its_default_unset():
    config = _parse("--judge", "runs/j0", "runs/j1", "--val-images", "3")
    assert config.judge == ["runs/j0", "runs/j1"] and config.val_images == 3
    assert _parse("--val-images", "3").judge is None


def test_a_list_field_needs_a_value_and_a_yaml_list(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        _parse("--judge")
    assert stop.value.code == 2 and "expected at least one argument" in capsys.readouterr().err
    listed, single = tmp_path / "listed.yaml", tmp_path / "single.yaml"
    listed.write_text("judge: [runs/j0, runs/j1]\n")
    single.write_text("judge: runs/j0\n")
    assert _parse("--config", str(listed)).judge == ["runs/j0", "runs/j1"]
    with pytest.raises(CnnkitError, match=r"'judge' must be a list of str, got 'runs/j0'"):
        _parse("--config", str(single))


def test_a_run_saved_with_one_judge_path_resolves_to_a_list_of_one(tmp_path):
    config = CycleGanConfig(judge=str(tmp_path / "judge"), val_images=3).resolve()
    assert config.judge == [str((tmp_path / "judge").resolve())]
