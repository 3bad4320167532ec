"""The character-level GPT example on text shards: run, killed at a random moment, resumed."""

from __future__ import annotations

import os
import pathlib
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

pytestmark = pytest.mark.slow

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "char_gpt.py"
STEPS = "120"  # past the end of the first epoch (100 batches): the stream restarts


def _command(root: pathlib.Path, *options: str) -> list[str]:
    return [sys.executable, str(EXAMPLE), "--root", str(root), "--steps", STEPS, *options]


def test_char_gpt_killed_anywhere_resumes_to_the_same_weights(tmp_path: pathlib.Path) -> None:
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1"}
    reference = subprocess.run(
        _command(tmp_path / "reference"), capture_output=True, text=True, timeout=180, env=env
    )
    assert reference.returncode == 0, reference.stdout + reference.stderr
    assert "Training finished at epoch 2, iteration 120" in reference.stdout
    assert "sample: the cat" in reference.stdout

    root = tmp_path / "killed"
    chkpt = root / "chkpt" / "char_gpt"
    job = subprocess.Popen(
        _command(root, "--step-sleep", "0.02"),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while len(list(chkpt.glob("*.pth"))) < random.randint(1, 5) and job.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint"
        time.sleep(0.02)
    time.sleep(random.uniform(0.0, 0.3))
    os.killpg(job.pid, signal.SIGKILL)  # the job, its loader workers
    job.wait(timeout=60)
    assert job.returncode == -signal.SIGKILL

    resumed = subprocess.run(_command(root), capture_output=True, text=True, timeout=180, env=env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "Resuming training from checkpoint" in resumed.stdout
    expected = torch.load(tmp_path / "reference" / "final.pt", weights_only=True)
    got = torch.load(root / "final.pt", weights_only=True)
    for key, value in expected.items():
        assert torch.equal(got[key], value), f"weights differ in {key}"
