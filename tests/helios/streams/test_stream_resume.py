"""Exact resume of training on a stream: real worker processes, real torchrun jobs on gloo.

A job (``stream_job.py``) trains on a stream whose samples get random noise in the loader
workers; the tests SIGKILL it at random moments inside epochs, run it again until it
finishes, and compare with an uninterrupted run: the same final weights, bit for bit, and
the same samples (ids and noisy inputs) at every iteration.
"""

from __future__ import annotations

import json
import os
import pathlib
import random
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import pytest
import stream_job as job
import torch

pytestmark = pytest.mark.slow

JOB = pathlib.Path(job.__file__)
REPO_ROOT = pathlib.Path(__file__).resolve().parents[3]
STEPS = 18  # 3 epochs of 6 batches per rank under torchrun (2 x 2 readers of 12 samples)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return int(sock.getsockname()[1])


def _command(workdir: pathlib.Path, processes: int, *options: str) -> list[str]:
    script = [str(JOB), str(workdir), "--total-steps", str(STEPS), *options]
    if not processes:
        return [sys.executable, *script]
    return [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}",
        f"--master_port={_free_port()}", *script,
    ]  # fmt: skip


def _launch(workdir: pathlib.Path, processes: int, *options: str) -> subprocess.Popen[bytes]:
    workdir.mkdir(parents=True, exist_ok=True)
    out = open(workdir / f"launch_{time.monotonic_ns()}.out", "wb")  # noqa: SIM115
    # A session of its own: the kill reaches torchrun, its ranks and their loader workers.
    return subprocess.Popen(
        _command(workdir, processes, *options), cwd=REPO_ROOT, stdout=out, stderr=out,
        start_new_session=True,
    )  # fmt: skip


def _run(workdir: pathlib.Path, processes: int, *options: str) -> subprocess.CompletedProcess[str]:
    workdir.mkdir(parents=True, exist_ok=True)
    command = _command(workdir, processes, *options)
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=240)


def _records(workdir: pathlib.Path, rank: int = 0, keep_pid: bool = False) -> list[dict[str, Any]]:
    path = workdir / f"batches{rank}.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    for record in records:
        if not keep_pid:
            del record["pid"]
    return records


def _batches(workdir: pathlib.Path) -> int:
    path = workdir / "batches0.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def _kill_after(launch: subprocess.Popen[bytes], workdir: pathlib.Path, batches: int) -> None:
    deadline = time.monotonic() + 120
    while _batches(workdir) < batches and launch.poll() is None:
        assert time.monotonic() < deadline, "the job made no progress"
        time.sleep(0.01)
    time.sleep(random.uniform(0.0, 0.08))  # anywhere in the step, the save or the loading
    os.killpg(launch.pid, signal.SIGKILL)
    launch.wait(timeout=60)


def _assert_resumed_exactly(
    reference: pathlib.Path, resumed: pathlib.Path, ranks: int, launches: int
) -> None:
    for rank in range(ranks):
        expected = torch.load(reference / f"final{rank}.pt", weights_only=True)
        got = torch.load(resumed / f"final{rank}.pt", weights_only=True)
        for key, value in expected.items():
            assert torch.equal(got[key], value), f"rank {rank}: weights differ in {key}"
        # A batch trained again after a kill is the same batch; counted once, the samples
        # (ids and noisy inputs) are those of the uninterrupted run, iteration by iteration.
        by_iteration: dict[int, dict[str, Any]] = {}
        for record in _records(resumed, rank):
            earlier = by_iteration.setdefault(record["gi"], record)
            assert earlier == record, f"rank {rank} redid iteration {record['gi']} differently"
        assert [by_iteration[gi] for gi in sorted(by_iteration)] == _records(reference, rank)
    records = _records(resumed, 0, keep_pid=True)
    starts = [r["gi"] for i, r in enumerate(records) if not i or r["pid"] != records[i - 1]["pid"]]
    assert len(starts) == launches and starts == sorted(starts), "each launch resumed"
    assert all(start > 1 for start in starts[1:]), "from a checkpoint, not from the start"


@pytest.mark.parametrize("processes", [0, 2], ids=["one-process", "torchrun-2x2"])
def test_sigkill_inside_epochs_then_resume_is_bit_identical(
    processes: int, tmp_path: pathlib.Path
) -> None:
    reference = _run(tmp_path / "reference", processes)
    assert reference.returncode == 0, reference.stdout + reference.stderr
    first = random.randint(2, STEPS // 2)
    kills = [first, random.randint(first + 2, STEPS - 2)]
    print(f"killing the job after {kills} batches of rank 0")
    workdir = tmp_path / "killed"
    for batches in kills:
        _kill_after(_launch(workdir, processes, "--step-sleep", "0.03"), workdir, batches)
    final = _run(workdir, processes)
    assert final.returncode == 0, final.stdout + final.stderr
    _assert_resumed_exactly(tmp_path / "reference", workdir, max(processes, 1), len(kills) + 1)


def test_another_number_of_processes_inside_an_epoch_is_refused(tmp_path: pathlib.Path) -> None:
    _kill_after(_launch(tmp_path, 2, "--step-sleep", "0.05"), tmp_path, 3)
    resumed = _run(tmp_path, 1)
    output = resumed.stdout + resumed.stderr
    assert resumed.returncode != 0
    assert "saved by rank 0 of 2 process(es) with 2 loader worker(s)" in output, output
    assert "Resume with the same number of processes and num_workers" in output


def _fit(workdir: pathlib.Path, workers: int, resume: str, crash_at: int | None = None) -> Any:
    model = job.StreamModel(crash_at=crash_at)
    data = job.StreamDataModule(workers, stateless=True, resume=resume)
    ok = job.make_trainer(workdir, 10).fit(model, data)
    return ok, model


@pytest.mark.parametrize("resume", ["restart", "skip"])
def test_a_stream_without_state_warns_at_the_first_checkpoint_and_resumes_as_chosen(
    resume: str, tmp_path: pathlib.Path
) -> None:
    workers = 2
    with pytest.warns(RuntimeWarning, match="StatelessStream has no state_dict"):
        ok, uninterrupted = _fit(tmp_path / "reference", workers, resume)
    assert ok
    with pytest.warns(RuntimeWarning, match="StatelessStream has no state_dict") as warned:
        crashed, _ = _fit(tmp_path / "run", workers, resume, crash_at=5)
    assert crashed is False
    assert len([w for w in warned if "no state_dict" in str(w.message)]) == 1, "once"
    message = str(next(w.message for w in warned if "no state_dict" in str(w.message)))
    with pytest.warns(RuntimeWarning, match="no state_dict"):  # once per run: this one too
        ok, resumed = _fit(tmp_path / "run", workers, resume)
    assert ok
    first = resumed.records[0]
    assert first["gi"] == 5, "resumed after the checkpoint of iteration 4"
    if resume == "skip":
        assert "drops the samples each reader had yielded" in message
        assert resumed.records == uninterrupted.records[4:]
        for key, value in uninterrupted.weights().items():
            assert torch.equal(resumed.weights()[key], value), f"weights differ in {key}"
    else:
        assert "starts the epoch's stream again" in message
        assert "stream_resume='skip'" in message
        assert first["ids"] == uninterrupted.records[0]["ids"], "the epoch started again"
