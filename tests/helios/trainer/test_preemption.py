"""Preemption: a real signal stops a real training process at a batch boundary.

Each test starts ``resume_job.py`` without periodic checkpoints, sends it SIGTERM, SIGUSR1
or SIGINT while it trains or validates, and checks that it wrote exactly one checkpoint at
the position it reached, exited with ``128 + signal``, and that running the same command
again ends with weights bit-identical to an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from typing import Any

import pytest
import resume_job as job
import torch

import helios.trainer as hlt
from helios.trainer.preemption import Preemption

JOB_PATH = pathlib.Path(__file__).with_name("resume_job.py")
CONFIGS = {"iteration": ("iteration", 9, 2), "epoch": ("epoch", 6, 1)}


@pytest.fixture(scope="module")
def reference_weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    weights = {}
    for config, (unit, total, accumulation) in CONFIGS.items():
        workdir = tmp_path_factory.mktemp(f"reference-{config}")
        model = job.ResumeModel(accumulation=accumulation)
        trainer = job.make_trainer(workdir, unit, total, accumulation)
        assert trainer.fit(model, job.ResumeDataModule())
        weights[config] = {key: value.clone() for key, value in model.net.state_dict().items()}
    return weights


def _start(workdir: pathlib.Path, config: str, *extra: str) -> subprocess.Popen[bytes]:
    unit, total, accumulation = CONFIGS[config]
    command = [sys.executable, str(JOB_PATH), str(workdir), unit, str(total), str(accumulation)]
    output = (workdir / "output.txt").open("ab")
    return subprocess.Popen([*command, *extra], stdout=output, stderr=subprocess.STDOUT)


def _lines(path: pathlib.Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _wait_for(path: pathlib.Path, count: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while len(_lines(path)) < count:
        assert process.poll() is None, "the job ended before it was signalled"
        assert time.monotonic() < deadline, f"{path.name} never reached {count} lines"
        time.sleep(0.01)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("config", "sig", "during"),
    [
        ("epoch", signal.SIGTERM, "training"),
        ("iteration", signal.SIGUSR1, "training"),
        ("epoch", signal.SIGINT, "validation"),
        ("iteration", signal.SIGTERM, "validation"),
    ],
)
def test_signal_saves_at_the_batch_boundary_and_the_rerun_is_exact(
    config: str,
    sig: signal.Signals,
    during: str,
    reference_weights: dict[str, Any],
    tmp_path: pathlib.Path,
) -> None:
    slow = ["--step-sleep", "0.05", "--valid-sleep", "0.3", "--chkpt-frequency", "1000"]
    process = _start(tmp_path, config, *slow)
    if during == "training":
        _wait_for(tmp_path / "batches.jsonl", 5, process)
    else:
        _wait_for(tmp_path / "valid.jsonl", 1, process)
    os.kill(process.pid, sig)
    assert process.wait(timeout=120) == 128 + sig
    output = (tmp_path / "output.txt").read_text()
    assert f"Training stopped by {sig.name}" in output

    checkpoints = list(job.checkpoint_dir(tmp_path).glob("*.pth"))
    assert len(checkpoints) == 1, "exactly the preemption checkpoint is written"
    assert str(checkpoints[0]) in output
    saved = torch.load(checkpoints[0], weights_only=False)
    batches_done = len(_lines(tmp_path / "batches.jsonl"))
    # Nothing trained after the checkpoint's position, nothing before it lost.
    assert saved["training_state"].global_iteration == batches_done
    assert saved["preemption"] == {
        "signal": sig.name,
        "unit_end_pending": during == "validation",
    }

    rerun = _start(tmp_path, config)
    assert rerun.wait(timeout=300) == 0, (tmp_path / "output.txt").read_text()
    final = torch.load(tmp_path / "final.pt", weights_only=True)
    for key, value in reference_weights[config].items():
        assert torch.equal(final[key], value), f"weights differ in {key}"
    records = _lines(tmp_path / "batches.jsonl")
    assert [r["gi"] for r in records] == list(range(1, 19)), "no batch repeated or skipped"


def test_a_second_ctrl_c_aborts_at_once() -> None:
    before = signal.getsignal(signal.SIGINT)  # a pytest-xdist worker ignores SIGINT
    preemption = Preemption()
    with preemption.handling_signals():
        os.kill(os.getpid(), signal.SIGINT)
        assert preemption.poll() and preemption.signal_number == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
    assert signal.getsignal(signal.SIGINT) is before


def test_preempted_carries_the_exit_code_a_scheduler_expects() -> None:
    stopped = hlt.Preempted(signal.SIGUSR1, pathlib.Path("x.pth"))
    assert isinstance(stopped, SystemExit)
    assert stopped.code == 138 and stopped.signal_name == "SIGUSR1"
