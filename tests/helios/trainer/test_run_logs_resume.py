"""Logs on resume: TensorBoard points are never duplicated, and logs follow the given roots.

The event files are read back with TensorBoard's own ``EventAccumulator`` (with
``purge_orphaned_data=False``, so that it shows what the files hold rather than hiding
out-of-order steps).
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import resume_job as job

from helios.core import logging

JOB_PATH = pathlib.Path(__file__).with_name("resume_job.py")
UNIT, TOTAL = "epoch", 6


def _scalars(run_dir: pathlib.Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    accumulator = EventAccumulator(
        str(run_dir), size_guidance={"tensors": 0}, purge_orphaned_data=False
    )
    accumulator.Reload()
    # torch's SummaryWriter writes scalars as tensor summaries. Sorted by step: event files
    # created in the same second (a kill and a quick resume) are read in pid order.
    return sorted(
        (event.step, float(tensor_util.make_ndarray(event.tensor_proto)))
        for event in accumulator.Tensors(tag)
    )


def _fit(
    roots: pathlib.Path, total: int = TOTAL, crash_at: int | None = None, **kwargs: Any
) -> bool:
    model = job.ResumeModel(crash_at=crash_at, log_scalars=True)
    arguments: dict[str, Any] = {
        "chkpt_root": roots / "chkpt",
        "enable_tensorboard": True,
        "run_path": roots / "runs",
        "enable_file_logging": True,
        "log_path": roots / "logs",
        **kwargs,
    }
    trainer = job.make_trainer(roots, UNIT, total, 1, **arguments)
    return trainer.fit(model, job.ResumeDataModule())


def _run_dir(runs: pathlib.Path) -> pathlib.Path:
    (run_dir,) = runs.iterdir()
    return run_dir


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[tuple[int, float]]]:
    roots = tmp_path_factory.mktemp("reference")
    assert _fit(roots)
    run_dir = _run_dir(roots / "runs")
    return {tag: _scalars(run_dir, tag) for tag in ("train/loss", "valid/cycle")}


def _records(workdir: pathlib.Path) -> list[dict[str, Any]]:
    path = workdir / "batches.jsonl"
    text = path.read_text() if path.exists() else ""
    return [json.loads(line) for line in text.split("\n")[:-1]]


@pytest.mark.slow
def test_points_logged_after_the_last_checkpoint_of_a_killed_run_are_not_duplicated(
    reference: dict[str, list[tuple[int, float]]], tmp_path: pathlib.Path
) -> None:
    command = [sys.executable, str(JOB_PATH), str(tmp_path), UNIT, str(TOTAL), "1"]
    command += ["--tensorboard", "--step-sleep", "0.05"]
    with (tmp_path / "job.out").open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while len(_records(tmp_path)) < 8:  # epoch 3; the newest checkpoint ends epoch 2
            assert process.poll() is None, (tmp_path / "job.out").read_text()
            assert time.monotonic() < deadline
            time.sleep(0.005)
        os.kill(process.pid, signal.SIGKILL)
        assert process.wait(timeout=60) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    run_dir = _run_dir(tmp_path / "runs")
    logged = [step for step, _ in _scalars(run_dir, "train/loss")]
    assert logged[:8] == list(range(1, 9))  # points 7 and 8 came after the checkpoint

    assert _fit(tmp_path)
    assert _run_dir(tmp_path / "runs") == run_dir
    assert len(list(run_dir.iterdir())) == 2  # the killed run's event file and ours
    for tag, expected in reference.items():
        assert _scalars(run_dir, tag) == expected


def test_a_moved_run_folder_logs_into_its_own_folders(
    reference: dict[str, list[tuple[int, float]]], tmp_path: pathlib.Path
) -> None:
    first, moved = tmp_path / "first", tmp_path / "moved"
    assert _fit(first, crash_at=11) is False  # epoch 4; the checkpoint ends epoch 3
    (log_file,) = (first / "logs").iterdir()
    run_name = _run_dir(first / "runs").name
    shutil.move(first, moved)

    assert _fit(moved)
    assert not first.exists()
    assert [p.name for p in (moved / "logs").iterdir()] == [log_file.name]
    log = (moved / "logs" / log_file.name).read_text()
    assert "Resuming training from checkpoint" in log
    run_dir = _run_dir(moved / "runs")
    assert run_dir.name == run_name
    # The crashed run's points 10 and 11, after its checkpoint, were purged.
    for tag, expected in reference.items():
        assert _scalars(run_dir, tag) == expected


@contextlib.contextmanager
def _read_only(*folders: pathlib.Path) -> Iterator[None]:
    """Make folders unwritable, even for root (``chattr +i``), where that is permitted."""
    chattr = shutil.which("chattr")
    done: list[pathlib.Path] = []
    try:
        for folder in folders:
            if os.geteuid() != 0:
                folder.chmod(0o555)
                done.append(folder)
            elif chattr is not None:
                result = subprocess.run([chattr, "+i", str(folder)], capture_output=True)
                if result.returncode == 0:
                    done.append(folder)
        yield
    finally:
        for folder in done:
            if os.geteuid() != 0:
                folder.chmod(0o755)
            else:
                subprocess.run([chattr or "chattr", "-i", str(folder)], check=True)


def test_a_resume_given_new_log_and_run_paths_uses_them(
    reference: dict[str, list[tuple[int, float]]], tmp_path: pathlib.Path
) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    assert _fit(old, crash_at=11) is False
    (log_file,) = (old / "logs").iterdir()
    old_run = _run_dir(old / "runs")
    before = {p: p.stat().st_size for p in [log_file, *old_run.iterdir()]}

    with _read_only(old / "logs", old_run):
        assert _fit(old, log_path=new / "logs", run_path=new / "runs")
    assert {p: p.stat().st_size for p in [log_file, *old_run.iterdir()]} == before
    assert [p.name for p in (new / "logs").iterdir()] == [log_file.name]
    assert "Resuming training from checkpoint" in (new / "logs" / log_file.name).read_text()
    new_run = _run_dir(new / "runs")
    assert new_run.name == old_run.name
    assert [step for step, _ in _scalars(new_run, "train/loss")] == list(range(10, 19))
    assert _scalars(new_run, "train/loss") == reference["train/loss"][9:]


class FinalModel(job.ResumeModel):
    """Logs one more point when training ends, after the last checkpoint."""

    def on_training_end(self) -> None:
        writer = logging.get_tensorboard_writer()
        assert writer is not None
        writer.add_scalar("final/loss", self.records[-1]["draws"][-1], 0)


def test_rerunning_a_finished_run_purges_nothing(tmp_path: pathlib.Path) -> None:
    for _ in range(2):
        trainer = job.make_trainer(
            tmp_path, UNIT, TOTAL, 1, enable_tensorboard=True, run_path=tmp_path / "runs"
        )
        assert trainer.fit(FinalModel(log_scalars=True), job.ResumeDataModule())
        run_dir = _run_dir(tmp_path / "runs")
        assert [step for step, _ in _scalars(run_dir, "train/loss")] == list(range(1, 19))
        assert len(_scalars(run_dir, "final/loss")) == 1
