"""helios fit/test: config files, overrides, --print-config, and errors before training."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re

import pytest
import yaml
from cli_support import mlp_config, run_helios

from helios.cli import OptimizerSpec
from helios.cli.config import ConfigError, apply_override, parse_overrides
from helios.cli.main import main


def test_overrides_are_read_as_yaml_and_set_by_dotted_path() -> None:
    pairs = parse_overrides(["--trainer.total_steps=5", "--a.b", "0.5", "--plugins=[]"])
    assert pairs == [("trainer.total_steps", 5), ("a.b", 0.5), ("plugins", [])]
    config: dict = {"trainer": {"total_steps": 1}, "plugins": [{"type": "P", "args": {}}]}
    apply_override(config, "trainer.total_steps", 5)
    apply_override(config, "plugins.0.args.x", "y")
    apply_override(config, "model.args.lr", 0.1)
    assert config == {
        "trainer": {"total_steps": 5},
        "plugins": [{"type": "P", "args": {"x": "y"}}],
        "model": {"args": {"lr": 0.1}},
    }
    with pytest.raises(ConfigError, match=r"plugins\.3: plugins is a list of 1 entries"):
        apply_override(config, "plugins.3.args", {})
    with pytest.raises(ConfigError, match=r"overrides are written --key\.path=value"):
        parse_overrides(["trainer.total_steps=5"])


def test_a_spec_builds_its_registered_type_with_its_arguments() -> None:
    import torch

    spec = OptimizerSpec("SGD", lr=0.5, momentum=0.9)
    optimizer = spec.build([torch.nn.Parameter(torch.zeros(2))])
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.param_groups[0]["momentum"] == 0.9
    assert spec.to_dict() == {"type": "SGD", "args": {"lr": 0.5, "momentum": 0.9}}
    with pytest.raises(KeyError, match="Available names"):
        OptimizerSpec("Nope").build([])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "--trainer.total_stepz=3",
            r"error: trainer\.total_stepz: unknown key \(value 3 \(int\)\) \(did you mean "
            r"'total_steps'\?\)\. Trainer takes: run_name, train_unit, total_steps",
        ),
        (
            "--trainer.total_steps=abc",
            r"error: trainer\.total_steps: invalid value 'abc': expected int or float",
        ),
        (
            "--trainer.train_unit=3",
            r"error: trainer\.train_unit: invalid value 3 \(int\): expected TrainingUnit "
            r"\{ITERATION,EPOCH\} or str",
        ),
        (
            "--model.args.optimizer.type=Adamm",
            r"error: model\.args\.optimizer\.type: no optimizer registered as 'Adamm' \(did "
            r"you mean 'Adam'\?\)\. Registered: .*AdamW",
        ),
        (
            "--model.args.optimizer.args.lr=fast",
            r"error: model\.args\.optimizer\.args\.lr: invalid value 'fast': expected float or "
            r"Tensor",
        ),
        (
            "--model.args.network.args.layers=2",
            r"error: model\.args\.network\.args\.layers: unknown key \(value 2 \(int\)\)\. "
            r"TinyMLP takes: width",
        ),
        (
            "--datamodule.type=Digitz",
            # a suggestion comes when another test registered a close name (DigitsData)
            r"error: datamodule\.type: no datamodule class called 'Digitz'"
            r"(?: \(did you mean '\w+'\?\))?\. Available: .*"
            r"SmallDigits",
        ),
        (
            "--trainer.valid_frequency=0",
            r"error: trainer\.valid_frequency: valid_frequency must be None or an int >= 1, "
            r"but received 0",
        ),
        ("--seed=1", r"error: seed: unknown key \(value 1 \(int\)\)\. Allowed: imports, "),
        (
            "--model.args.loss=null",
            r"error: model\.args\.loss: expected \{type: \.\.\., args: \{\.\.\.\}\}, got None",
        ),
    ],
)
def test_a_bad_key_or_value_fails_before_training_naming_key_value_and_what_is_allowed(
    tmp_path: pathlib.Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    override: str,
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["fit", mlp_config(tmp_path), override]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert not (tmp_path / "chkpt").exists()  # nothing trained, nothing written


def test_a_missing_config_file_and_a_broken_one_are_errors(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["fit", str(tmp_path / "nope.yaml")]) == 2
    assert "cannot read the config file" in capsys.readouterr().err
    (tmp_path / "bad.yaml").write_text("model: {type: [\n")
    assert main(["fit", str(tmp_path / "bad.yaml")]) == 2
    assert "is not valid" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text('{"model": }')
    assert main(["fit", str(tmp_path / "bad.json")]) == 2
    assert "bad.json' is not valid" in capsys.readouterr().err


@pytest.mark.slow
def test_print_config_shows_the_resolved_config_with_overrides_and_defaults(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run_helios(
        "fit", mlp_config(tmp_path), "--trainer.total_steps=7",
        "--model.args.optimizer.args.lr=0.5", "--print-config", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert resolved["trainer"]["total_steps"] == 7
    assert resolved["trainer"]["precision"] == "32"  # a default, filled in
    optimizer = resolved["model"]["args"]["optimizer"]
    assert optimizer["type"] == "Adam"
    assert optimizer["args"]["lr"] == 0.5
    assert optimizer["args"]["betas"] == [0.9, 0.999]
    assert resolved["datamodule"] == {"type": "SmallDigits", "args": {"batch_size": 32}}
    assert not (tmp_path / "chkpt").exists()
    # The printed config is a config file that resolves to itself; JSON works too.
    (tmp_path / "resolved.yaml").write_text(result.stdout)
    capsys.readouterr()
    assert main(["fit", str(tmp_path / "resolved.yaml"), "--print-config=json"]) == 0
    assert json.loads(capsys.readouterr().out) == resolved


@pytest.mark.slow
def test_the_installed_command_reports_a_bad_key_without_a_traceback(
    tmp_path: pathlib.Path,
) -> None:
    """The errors are tested in this process above; the command prints them the same way."""
    result = run_helios("fit", mlp_config(tmp_path), "--trainer.total_stepz=3", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("error: trainer.total_stepz: unknown key (value 3 (int))")
    assert "did you mean 'total_steps'?" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "chkpt").exists()


@dataclasses.dataclass
class Window:
    size: int = 1
    label: str = "w"


class Reader:
    def __init__(self, window: Window, root: pathlib.Path | None = None) -> None:
        pass


def test_a_dataclass_argument_is_built_from_its_mapping_and_checked() -> None:
    from helios.cli.config import check_arguments

    checked = check_arguments(Reader, {"window": {"size": 5}, "root": "data"}, "datamodule.args")
    assert checked.kwargs == {"window": Window(5, "w"), "root": pathlib.Path("data")}
    assert checked.plain == {"window": {"size": 5, "label": "w"}, "root": "data"}
    with pytest.raises(ConfigError, match=r"datamodule\.args\.window: invalid value"):
        check_arguments(Reader, {"window": {"size": "big"}}, "datamodule.args")
