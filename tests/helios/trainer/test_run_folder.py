"""One run per checkpoint folder; an unusable folder or checkpoint fails before training.

The lock tests start real ``resume_job.py`` processes: a second run on the folder of a live
run refuses to start and names the holder, the live run is not disturbed (it ends with the
same weights as a run alone), and the leftovers of a SIGKILLed run do not hold the folder.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import resume_job as job
import torch
from torch import nn

from helios.trainer.run_folder import LOCK_NAME, RunFolderLock

JOB_PATH = pathlib.Path(__file__).with_name("resume_job.py")
UNIT, TOTAL, ACCUMULATION = "epoch", 6, 1


def _fit(workdir: pathlib.Path, model: job.ResumeModel | None = None) -> tuple[bool, Any]:
    model = model or job.ResumeModel()
    trainer = job.make_trainer(workdir, UNIT, TOTAL, ACCUMULATION)
    return trainer.fit(model, job.ResumeDataModule()), model


def _weights(model: job.ResumeModel) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in model.net.state_dict().items()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    ok, model = _fit(tmp_path_factory.mktemp("reference"))
    assert ok
    return _weights(model)


def _start(workdir: pathlib.Path, name: str, *extra: str) -> subprocess.Popen[bytes]:
    command = [sys.executable, str(JOB_PATH), str(workdir), UNIT, str(TOTAL), str(ACCUMULATION)]
    output = (workdir / f"{name}.out").open("wb")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([*command, *extra], stdout=output, stderr=subprocess.STDOUT, env=env)


def _wait_for(path: pathlib.Path, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while not path.exists():
        assert process.poll() is None, "the job ended before it started training"
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.01)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.slow
def test_a_second_run_on_a_live_runs_folder_refuses_and_names_the_holder(
    reference: dict[str, torch.Tensor],
    tmp_path: pathlib.Path,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    go = tmp_path / "go_second"
    # Slow saves: the live run has a temporary file in flight most of the time.
    first = _start(tmp_path, "first", "--step-sleep", "0.2", "--save-sleep", "0.2")
    second = _start(tmp_path, "second", "--go", str(go))
    processes += [first, second]
    _wait_for(tmp_path / f"started_{first.pid}", first)
    lock = job.checkpoint_dir(tmp_path) / LOCK_NAME
    assert lock.exists()
    go.touch()
    assert second.wait(timeout=120) == 1
    assert first.poll() is None, "the live run ended before the second one was refused"
    refused = (tmp_path / "second.out").read_text()
    assert "is in use by another run" in refused
    assert f"pid {first.pid} on host {socket.gethostname()}, started " in refused
    assert not (tmp_path / f"started_{second.pid}").exists()

    # The live run saved every checkpoint and ends exactly as a run alone.
    assert first.wait(timeout=120) == 0, (tmp_path / "first.out").read_text()
    final = torch.load(tmp_path / "final.pt", weights_only=True)
    for key, value in final.items():
        assert torch.equal(value, reference[key])
    assert len(list(job.checkpoint_dir(tmp_path).glob("*.pth"))) == TOTAL
    assert not lock.exists()


@pytest.mark.slow
def test_a_killed_runs_leftovers_do_not_hold_the_folder(
    reference: dict[str, torch.Tensor],
    tmp_path: pathlib.Path,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    first = _start(tmp_path, "first", "--step-sleep", "0.1")
    processes.append(first)
    _wait_for(tmp_path / f"started_{first.pid}", first)
    os.kill(first.pid, signal.SIGKILL)
    assert first.wait(timeout=60) == -signal.SIGKILL
    assert (job.checkpoint_dir(tmp_path) / LOCK_NAME).exists()

    ok, model = _fit(tmp_path)
    assert ok
    assert _weights(model).keys() == reference.keys()
    for key, value in _weights(model).items():
        assert torch.equal(value, reference[key])
    assert not (job.checkpoint_dir(tmp_path) / LOCK_NAME).exists()


def test_a_held_folder_refuses_fit_before_anything_trains(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = job.checkpoint_dir(tmp_path)
    holder = RunFolderLock(folder)
    holder.acquire()
    try:
        ok, model = _fit(tmp_path)
    finally:
        holder.release()
    assert ok is False
    assert model.records == []
    out = capsys.readouterr().err
    expected = f"the checkpoint folder {folder} is in use by another run (pid {os.getpid()}"
    assert expected in out
    assert list(folder.iterdir()) == []
    ok, _ = _fit(tmp_path)
    assert ok


# -- an unusable folder fails at the start -----------------------------------------------


def _assert_fails_before_training(
    workdir: pathlib.Path, folder: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    ok, model = _fit(workdir)
    assert ok is False
    assert model.records == []
    out = capsys.readouterr().err
    assert f"the checkpoint folder {folder} cannot be written" in out
    assert "pass another chkpt_root" in out


@contextlib.contextmanager
def _immutable(folder: pathlib.Path) -> Iterator[None]:
    chattr = shutil.which("chattr")
    if chattr is None:
        pytest.skip("chattr is not installed")
    done = subprocess.run([chattr, "+i", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"chattr +i is not permitted here: {done.stderr.decode().strip()}")
    try:
        yield
    finally:
        subprocess.run([chattr, "-i", str(folder)], check=True)


def test_an_immutable_checkpoint_folder_fails_fit_at_the_start(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # chattr +i stops writes even for root, for whom chmod does not.
    folder = job.checkpoint_dir(tmp_path)
    folder.mkdir(parents=True)
    with _immutable(folder):
        _assert_fails_before_training(tmp_path, folder, capsys)
        assert list(folder.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_checkpoint_folder_fails_fit_at_the_start(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = job.checkpoint_dir(tmp_path)
    folder.mkdir(parents=True)
    folder.chmod(0o555)
    try:
        _assert_fails_before_training(tmp_path, folder, capsys)
    finally:
        folder.chmod(0o755)


def test_a_checkpoint_folder_that_is_a_file_fails_fit_at_the_start(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The Trainer checks chkpt_root itself; the model's folder inside it is found by fit.
    folder = job.checkpoint_dir(tmp_path)
    folder.parent.mkdir()
    folder.write_text("not a folder")
    _assert_fails_before_training(tmp_path, folder, capsys)


# -- a checkpoint that does not fit the model ------------------------------------------------


class WiderModel(job.ResumeModel):
    def setup(self, fast_init: bool = False) -> None:
        self.net = nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 1))
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=0.05, momentum=0.9)


def test_a_checkpoint_of_another_architecture_names_its_file_and_how_to_start_fresh(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ok, _ = _fit(tmp_path)
    assert ok
    folder = job.checkpoint_dir(tmp_path)
    newest = folder / f"{job.SAVE_NAME}_epoch_{TOTAL}_iter_{3 * TOTAL}.pth"
    assert newest.exists()
    capsys.readouterr()
    ok, model = _fit(tmp_path, WiderModel())
    assert ok is False
    assert model.records == []
    out = capsys.readouterr().err
    assert f"the checkpoint {newest} does not fit this run" in out
    assert "size mismatch" in out
    assert f"start fresh: move or delete {folder}, or give the model a new save_name" in out
