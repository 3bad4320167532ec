"""helios fit from a config file: the same run as in Python, and resuming with a changed config."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest
import torch
from cli_support import EXAMPLES, mlp_config, run_helios

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
    result = run_helios("fit", config, *short, *quiet, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    python = subprocess.run(
        [sys.executable, str(EXAMPLES / "digits_classifier.py"), "--root", "py", "--epochs", "1"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert python.returncode == 0, python.stderr
    name = "classifier_epoch_1_iter_89.pth"
    from_config = tmp_path / "digits_run" / "chkpt" / "classifier" / name
    _assert_bit_identical(
        _model_state(from_config), _model_state(tmp_path / "py/chkpt/classifier" / name)
    )


def test_python_m_helios_is_the_same_command(tmp_path: pathlib.Path) -> None:
    config = mlp_config(tmp_path, total_steps=5, chkpt_frequency=5)
    result = subprocess.run(
        [sys.executable, "-m", "helios", "fit", config], cwd=tmp_path, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "chkpt" / "mlp" / "mlp_epoch_1_iter_5.pth").exists()


def test_the_same_command_under_torchrun(tmp_path: pathlib.Path) -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("localhost", 0))
        port = sock.getsockname()[1]
    config = mlp_config(tmp_path, total_steps=10, chkpt_frequency=10, use_cpu=True)
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
         f"--master_port={port}", "-m", "helios", "fit", config],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    checkpoint = tmp_path / "chkpt" / "mlp" / "mlp_epoch_1_iter_10.pth"
    summary = json.loads(run_helios("inspect", checkpoint, "--json", cwd=tmp_path).stdout)
    assert summary["world_size"] == 2
    assert summary["config"]["trainer"]["use_cpu"] is True


def test_a_resume_with_a_changed_config_is_refused_unless_allowed_by_name(
    tmp_path: pathlib.Path,
) -> None:
    config = mlp_config(tmp_path, total_steps=10, chkpt_frequency=10)
    first = run_helios("fit", config, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    folder = tmp_path / "chkpt" / "mlp"

    # A changed learning rate would not continue the same run: refused, naming the key,
    # before anything trains. Raising total_steps alone is allowed.
    longer = ["--trainer.total_steps=20", "--model.args.optimizer.args.lr=0.05"]
    changed = run_helios("fit", config, *longer, cwd=tmp_path)
    assert changed.returncode == 2
    assert "model.args.optimizer.args.lr: 0.01 -> 0.05" in changed.stderr
    assert "--allow-change model.args.optimizer.args.lr" in changed.stderr
    assert "trainer.total_steps" not in changed.stderr
    assert sorted(p.name for p in folder.glob("*.pth")) == ["mlp_epoch_1_iter_10.pth"]

    allowed = run_helios(
        "fit", config, *longer, "--allow-change", "model.args.optimizer", cwd=tmp_path
    )
    assert allowed.returncode == 0, allowed.stderr
    assert "trainer.total_steps: 10 -> 20" in allowed.stderr
    newest = folder / "mlp_epoch_1_iter_20.pth"
    summary = json.loads(run_helios("inspect", newest, "--json", cwd=tmp_path).stdout)
    assert summary["config"]["model"]["args"]["optimizer"]["args"]["lr"] == 0.05
    assert summary["config_changes"] == [
        {"model.args.optimizer.args.lr": [0.01, 0.05], "trainer.total_steps": [10, 20]}
    ]
    assert summary["environment"]["torch"] == str(torch.__version__)

    # helios test loads the newest checkpoint (the data module has no test split: the
    # trainer says so and tests no batch).
    tested = run_helios("test", config, *longer, cwd=tmp_path)
    assert tested.returncode == 0, tested.stderr
    assert "Testing using checkpoint chkpt/mlp/mlp_epoch_1_iter_20.pth" in tested.stdout
