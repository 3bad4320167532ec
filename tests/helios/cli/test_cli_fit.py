"""helios fit from a config file: the same run as in Python, and resuming with a changed config."""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys

import pytest
import torch
from cli_support import EXAMPLES, MLP_CHECKPOINT, mlp_config, run_helios

from helios.cli.main import main
from helios.core import safe_torch_load

pytestmark = pytest.mark.slow


def _model_state(path: pathlib.Path) -> dict:
    from helios.trainer import register_trainer_types_for_safe_load

    register_trainer_types_for_safe_load()
    return safe_torch_load(path, map_location="cpu")["model"]


def _assert_bit_identical(a: dict, b: dict) -> None:
    for key in ("net", "optimizer"):
        left = dict(_flat(a[key]))
        right = dict(_flat(b[key]))
        assert left.keys() == right.keys()
        for name, tensor in left.items():
            assert tensor.dtype == right[name].dtype, name
            assert torch.equal(tensor.view(torch.int32), right[name].view(torch.int32)), name


def _flat(value: object, prefix: str = "") -> list[tuple[str, torch.Tensor]]:
    if isinstance(value, torch.Tensor):
        return [(prefix, value)] if value.is_floating_point() else []
    if isinstance(value, dict):
        return [pair for k, v in value.items() for pair in _flat(v, f"{prefix}.{k}")]
    if isinstance(value, list):
        return [pair for i, v in enumerate(value) for pair in _flat(v, f"{prefix}.{i}")]
    return []


def test_a_config_file_run_of_the_digits_classifier_equals_the_python_run(
    tmp_path: pathlib.Path,
) -> None:
    config = EXAMPLES / "digits_config.yaml"
    short = ["--trainer.total_steps=1", "--model.args.epochs=1"]
    quiet = ["--trainer.enable_progress_bar=false", "--trainer.print_banner=false"]
    # Both runs use one thread: they run side by side.
    python = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "digits_classifier.py"), "--root", "py", "--epochs", "1"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        result = run_helios("fit", config, *short, *quiet, cwd=tmp_path)
        _, python_err = python.communicate(timeout=300)
    finally:
        python.kill()
        python.wait()
    assert result.returncode == 0, result.stderr
    assert python.returncode == 0, python_err
    name = "classifier_epoch_1_iter_89.pth"
    from_config = tmp_path / "digits_run" / "chkpt" / "classifier" / name
    _assert_bit_identical(
        _model_state(from_config), _model_state(tmp_path / "py/chkpt/classifier" / name)
    )


def _inspect(path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> dict:
    """What ``helios inspect --json`` prints (in this process: the command is tested in
    test_cli_inspect.py)."""
    capsys.readouterr()
    assert main(["inspect", str(path), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_python_m_helios_is_the_same_command(
    mlp_run: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The session's MLP run was trained by ``python -m helios fit``."""
    summary = _inspect(mlp_run / MLP_CHECKPOINT, capsys)
    assert summary["position"]["current_iteration"] == 10
    assert summary["config"]["model"]["type"] == "MLPClassifier"
    version = subprocess.run(
        [sys.executable, "-m", "helios", "--version"], capture_output=True, text=True, timeout=60
    )
    assert version.returncode == 0 and version.stdout.startswith("helios ")


def test_the_same_command_under_torchrun(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("localhost", 0))
        port = sock.getsockname()[1]
    config = mlp_config(tmp_path, total_steps=4, chkpt_frequency=4, use_cpu=True)
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
         f"--master_port={port}", "-m", "helios", "fit", config],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    summary = _inspect(tmp_path / "chkpt" / "mlp" / "mlp_epoch_1_iter_4.pth", capsys)
    assert summary["world_size"] == 2
    assert summary["config"]["trainer"]["use_cpu"] is True


def test_a_resume_with_a_changed_config_is_refused_unless_allowed_by_name(
    mlp_run: pathlib.Path, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    shutil.copytree(mlp_run, run)  # trained for 10 iterations by `helios fit mlp.yaml`
    config = run / "mlp.yaml"
    folder = run / "chkpt" / "mlp"

    # A changed learning rate would not continue the same run: refused, naming the key,
    # before anything trains. Raising total_steps alone is allowed.
    longer = ["--trainer.total_steps=20", "--model.args.optimizer.args.lr=0.05"]
    changed = run_helios("fit", config, *longer, cwd=run)
    assert changed.returncode == 2
    assert "error: the config differs from the one saved in" in changed.stderr
    assert "model.args.optimizer.args.lr: 0.01 -> 0.05" in changed.stderr
    assert "--allow-change model.args.optimizer.args.lr" in changed.stderr
    assert "trainer.total_steps" not in changed.stderr
    assert "Traceback" not in changed.stderr
    assert sorted(p.name for p in folder.glob("*.pth")) == ["mlp_epoch_1_iter_10.pth"]

    allowed = run_helios("fit", config, *longer, "--allow-change", "model.args.optimizer", cwd=run)
    assert allowed.returncode == 0, allowed.stderr
    assert "trainer.total_steps: 10 -> 20" in allowed.stderr
    summary = _inspect(folder / "mlp_epoch_1_iter_20.pth", capsys)
    assert summary["config"]["model"]["args"]["optimizer"]["args"]["lr"] == 0.05
    assert summary["config_changes"] == [
        {"model.args.optimizer.args.lr": [0.01, 0.05], "trainer.total_steps": [10, 20]}
    ]
    assert summary["environment"]["torch"] == str(torch.__version__)
    assert summary["environment"]["earlier"] == []

    # helios test loads the newest checkpoint (the data module has no test split: the
    # trainer says so and tests no batch).
    tested = run_helios("test", config, *longer, cwd=run)
    assert tested.returncode == 0, tested.stderr
    assert "Testing using checkpoint chkpt/mlp/mlp_epoch_1_iter_20.pth" in tested.stdout
