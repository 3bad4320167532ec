"""Fixtures of the tests of the ``helios`` command; ``import cli_support`` made to work."""

from __future__ import annotations

import importlib.util
import pathlib
import subprocess
import sys

import pytest


def _register(name: str) -> None:
    if name in sys.modules:
        return
    path = pathlib.Path(__file__).with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)


_register("cli_support")

from cli_support import MLP_CHECKPOINT, mlp_config  # noqa: E402


@pytest.fixture(scope="session")
def mlp_run(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """The folder of one run of the tiny MLP, trained once per session (10 iterations).

    It is trained by ``python -m helios fit`` (the module form of the command; the installed
    ``helios`` runs everywhere else), and holds ``mlp.yaml`` and the checkpoint
    ``chkpt/mlp/mlp_epoch_1_iter_10.pth`` (:py:data:`cli_support.MLP_CHECKPOINT`). Tests
    read it; a test that trains on from it copies the folder first.
    """
    folder = tmp_path_factory.mktemp("mlp_run")
    config = mlp_config(folder, total_steps=10, chkpt_frequency=10)
    result = subprocess.run(
        [sys.executable, "-m", "helios", "fit", config],
        cwd=folder, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert (folder / MLP_CHECKPOINT).is_file()
    return folder
