"""Asynchronous saves, and save errors that name the file.

The runs train ``resume_job``'s model (iteration unit, 9 iterations of 2 batches, a
checkpoint every iteration). The kill test SIGKILLs a real job while its writer thread is in
the middle of a save; the error tests run a job under a file-size limit (``RLIMIT_FSIZE``).
"""

from __future__ import annotations

import collections
import dataclasses
import io
import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import pytest
import resume_job as job
import torch

import helios.trainer as hlt
from helios.trainer.checkpoint import async_save

JOB_PATH = pathlib.Path(__file__).with_name("resume_job.py")
REPO_ROOT = pathlib.Path(__file__).resolve().parents[3]
UNIT, TOTAL, ACCUMULATION = "iteration", 9, 2


def _fit(workdir: pathlib.Path, **options: Any) -> tuple[bool, Any]:
    model = job.ResumeModel(accumulation=ACCUMULATION)
    trainer = job.make_trainer(workdir, UNIT, TOTAL, ACCUMULATION, **options)
    return trainer.fit(model, job.ResumeDataModule()), model


def _load_all(workdir: pathlib.Path) -> dict[str, Any]:
    hlt.register_trainer_types_for_safe_load()
    folder = job.checkpoint_dir(workdir)
    return {p.name: torch.load(p, weights_only=True) for p in sorted(folder.glob("*.pth"))}


def _assert_same(a: Any, b: Any, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            _assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert type(a) is type(b) and len(a) == len(b), where
        for index, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{where}[{index}]")
    elif isinstance(a, hlt.TrainingState):  # the same but for the measured step time
        timeless = {"average_iter_time": 0.0}
        assert dataclasses.replace(a, **timeless) == dataclasses.replace(b, **timeless), where
    else:
        assert a == b, where


def test_snapshot_is_a_deep_cpu_copy() -> None:
    shared = torch.arange(4.0)
    state = collections.OrderedDict(w=shared, v=shared, n=torch.zeros(2, dtype=torch.int64))
    state._metadata = {"": {"version": 1}}  # type: ignore[attr-defined]
    training_state = hlt.TrainingState(global_iteration=3)
    contents = {"model": {"net": state, "opt": [shared, {"lr": 0.1}]}, "ts": training_state}
    copied = async_save.snapshot(contents)
    shared.add_(100.0)
    contents["model"]["opt"][1]["lr"] = 9.0
    training_state.global_iteration = 4
    net = copied["model"]["net"]
    assert torch.equal(net["w"], torch.arange(4.0))
    assert net["w"] is net["v"] is copied["model"]["opt"][0]  # sharing kept
    assert type(net) is collections.OrderedDict and net._metadata == {"": {"version": 1}}
    assert copied["model"]["opt"][1]["lr"] == 0.1
    assert copied["ts"].global_iteration == 3
    assert net["n"].dtype == torch.int64


def _slow_torch_save(monkeypatch: pytest.MonkeyPatch, seconds: float) -> list[str]:
    """Make every file-object torch.save sleep in the middle; return the writing threads."""
    real = torch.save
    threads: list[str] = []

    def slow(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        buffer = io.BytesIO()
        real(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        f.write(data[: len(data) // 2])
        threads.append(threading.current_thread().name)
        time.sleep(seconds)
        f.write(data[len(data) // 2 :])

    monkeypatch.setattr(torch, "save", slow)
    return threads


@pytest.mark.slow
def test_async_saves_write_the_same_files_as_sync_saves(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = {"chkpt_keep_last": 3}
    ok, sync_model = _fit(tmp_path / "sync", **options)
    assert ok
    threads = _slow_torch_save(monkeypatch, 0.05)
    started = time.perf_counter()
    ok, async_model = _fit(tmp_path / "async", chkpt_async=True, **options)
    assert ok
    assert time.perf_counter() - started > 9 * 0.05  # fit waited for the last write
    assert set(threads) == {"helios-checkpoint-writer"}
    sync_files, async_files = _load_all(tmp_path / "sync"), _load_all(tmp_path / "async")
    assert list(async_files) == list(sync_files) and len(sync_files) == 3
    for name in sync_files:
        _assert_same(sync_files[name], async_files[name], name)
    for key, value in sync_model.net.state_dict().items():
        assert torch.equal(async_model.net.state_dict()[key], value)
    folder = job.checkpoint_dir(tmp_path / "async")
    assert not list(folder.glob(".*"))  # no temporary file left


# -- SIGKILL while the writer thread runs -------------------------------------------------------


def _output(workdir: pathlib.Path) -> str:
    return "\n".join(p.read_text() for p in sorted(workdir.glob("*.out")))


@pytest.mark.slow
@pytest.mark.parametrize("asynchronous", [True, False], ids=["background", "synchronous"])
def test_sigkill_during_a_save_deletes_nothing_and_resumes_exactly(
    asynchronous: bool, tmp_path: pathlib.Path
) -> None:
    # Retention deletes what a save makes obsolete only once the save is durable: killed in
    # the middle of writing (in the writer thread, or in the training thread itself), the
    # checkpoint it would drop is still there, the newest complete one.
    options = {"chkpt_async": asynchronous, "chkpt_keep_last": 1}
    ok, reference = _fit(tmp_path / "reference", **options)
    assert ok

    workdir = tmp_path / "killed"
    workdir.mkdir()
    command = [sys.executable, str(JOB_PATH), str(workdir), UNIT, str(TOTAL), str(ACCUMULATION)]
    command += ["--trainer", json.dumps(options), "--hang-in-save", "3"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(workdir / "job.out", "wb") as output:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdout=output, stderr=subprocess.STDOUT
        )
    try:
        marker = workdir / f"in_save_{process.pid}"
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert process.poll() is None, _output(workdir)
            assert time.monotonic() < deadline, "timed out waiting for the third save"
            time.sleep(0.005)
        # The writer hangs in the middle of the third save while training goes on to the
        # fourth iteration, whose save waits for the writer (a synchronous save hangs there).
        records = workdir / "batches.jsonl"
        while asynchronous and sum(1 for _ in records.read_text().splitlines()) < 8:
            assert process.poll() is None, _output(workdir)
            assert time.monotonic() < deadline, "training did not go on during the save"
            time.sleep(0.005)
        os.kill(process.pid, signal.SIGKILL)
        assert process.wait(timeout=60) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    folder = job.checkpoint_dir(workdir)
    names = sorted(p.name for p in folder.iterdir())
    # keep_last=1: iteration 2 dropped iteration 1 once durable; the third save was cut
    # short, so iteration 2 (which it would drop) is still there, and the newest valid one.
    # The killed run's lock file stays behind (it holds nothing once the process is gone).
    temporary = [n for n in names if n.startswith(".") and n != ".helios-run.lock"]
    assert len(temporary) == 1 and temporary[0].startswith(".resume_epoch_2_iter_3.pth.")
    assert [n for n in names if n.endswith(".pth")] == ["resume_epoch_2_iter_2.pth"]
    assert hlt.find_last_checkpoint(folder) == folder / "resume_epoch_2_iter_2.pth"

    ok, model = _fit(workdir, **options)
    assert ok
    assert model.records[0]["gi"] == 5
    for key, value in reference.net.state_dict().items():
        assert torch.equal(model.net.state_dict()[key], value), key
    assert sorted(p.name for p in folder.glob("*.pth")) == ["resume_epoch_6_iter_9.pth"]
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]


# -- errors that name the file ------------------------------------------------------------------

_LIMITED_JOB = textwrap.dedent(
    """
    import json, pathlib, resource, signal, sys
    sys.path.insert(0, {tests!r})
    import resume_job as job
    import helios.trainer as hlt

    workdir = pathlib.Path({workdir!r})
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
    trainer = job.make_trainer(workdir, "iteration", 9, 2, **json.loads({options!r}))
    trainer.train_exceptions.append(hlt.CheckpointWriteError)
    try:
        trainer.fit(job.ResumeModel(accumulation=2), job.ResumeDataModule())
    except hlt.CheckpointWriteError as error:
        print("RAISED", type(error).__name__, error.path)
        print("MESSAGE", error)
        sys.exit(3)
    """
)


def _run_limited(workdir: pathlib.Path, options: dict[str, Any]) -> str:
    script = _LIMITED_JOB.format(
        tests=str(JOB_PATH.parent), workdir=str(workdir), limit=2000, options=json.dumps(options)
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 3, result.stdout + result.stderr
    return result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("asynchronous", [False, True])
def test_a_save_past_the_file_size_limit_names_the_file_and_the_os_error(
    asynchronous: bool, tmp_path: pathlib.Path
) -> None:
    output = _run_limited(tmp_path, {"chkpt_async": asynchronous})
    path = job.checkpoint_dir(tmp_path) / "resume_epoch_1_iter_1.pth"
    assert f"RAISED CheckpointWriteError {path}" in output
    message = output.split("MESSAGE ", 1)[1]
    assert f"could not write checkpoint {path}: [EFBIG] File too large" in message
    if asynchronous:
        assert f"the background save of checkpoint {path} failed" in message
    assert "enforce fail" not in message and "unexpected pos" not in message
    # Nothing half-written is left, under the final name or a temporary one.
    assert list(job.checkpoint_dir(tmp_path).iterdir()) == []


def test_snapshots_reuse_the_buffers_of_the_previous_one() -> None:
    weights = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.ones(4).t()}
    buffers = async_save.SnapshotBuffers()
    first = async_save.snapshot({"model": weights}, buffers)
    pointers = {k: v.data_ptr() for k, v in first["model"].items()}
    buffers.recycle()  # the first one's write has completed
    weights["a"].mul_(2.0)
    second = async_save.snapshot({"model": weights}, buffers)
    assert {k: v.data_ptr() for k, v in second["model"].items()} == pointers
    assert torch.equal(second["model"]["a"], torch.arange(6.0).reshape(2, 3) * 2.0)
    # A transposed (non-contiguous) source is copied by value.
    strided = {"t": torch.arange(6.0).reshape(2, 3).t()}
    assert torch.equal(async_save.snapshot(strided, buffers)["t"], strided["t"])
