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
# 4 shards of 60 windows: epochs of 30 batches; 40 steps cross the end of the first, where
# the stream starts again.
STEPS, WINDOWS = "40", "60"
TIMEOUT = 600  # a loaded machine; about 25 s of CPU each alone


def _command(root: pathlib.Path, *options: str) -> list[str]:
    script = [str(EXAMPLE), "--root", str(root), "--steps", STEPS, "--windows", WINDOWS]
    return [sys.executable, *script, *options]


def test_char_gpt_killed_anywhere_resumes_to_the_same_weights(tmp_path: pathlib.Path) -> None:
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1"}
    reference = subprocess.run(
        _command(tmp_path / "reference"), capture_output=True, text=True, timeout=TIMEOUT, env=env
    )
    assert reference.returncode == 0, reference.stdout + reference.stderr
    assert "Training finished at epoch 2, iteration 40" in reference.stdout
    assert "sample: the cat" in reference.stdout

    root = tmp_path / "killed"
    chkpt = root / "chkpt" / "char_gpt"
    job = subprocess.Popen(
        _command(root, "--step-sleep", "0.02"),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + TIMEOUT
    checkpoints = random.randint(1, 3)
    while len(list(chkpt.glob("*.pth"))) < checkpoints and job.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint"
        time.sleep(0.02)
    time.sleep(random.uniform(0.0, 0.3))
    os.killpg(job.pid, signal.SIGKILL)  # the job, its loader workers
    job.wait(timeout=60)
    assert job.returncode == -signal.SIGKILL

    resumed = subprocess.run(
        _command(root), capture_output=True, text=True, timeout=TIMEOUT, env=env
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "Resuming training from checkpoint" in resumed.stdout
    expected = torch.load(tmp_path / "reference" / "final.pt", weights_only=True)
    got = torch.load(root / "final.pt", weights_only=True)
    for key, value in expected.items():
        assert torch.equal(got[key], value), f"weights differ in {key}"
