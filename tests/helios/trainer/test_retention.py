"""Checkpoint retention: last N, best K by a maximised or minimised metric, across resumes.

The runs train ``resume_job``'s model (iteration unit, 9 iterations of 2 batches, a
checkpoint every iteration, validation every iteration), whose ``metrics["score"]`` after
validation cycle ``c`` is ``SCORES[c]``: the checkpoint of iteration ``i`` carries
``SCORES[i - 1]``. The subprocess tests SIGKILL real jobs and resume them.
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
from helios.trainer.checkpoint import retention

JOB_PATH = pathlib.Path(__file__).with_name("resume_job.py")
REPO_ROOT = pathlib.Path(__file__).resolve().parents[3]
UNIT, TOTAL, ACCUMULATION = "iteration", 9, 2
BASE = {"valid_frequency": 1}


def _name(iteration: int) -> str:
    epoch = (2 * iteration - 1) // 3 + 1  # 3 batches per epoch, 2 per iteration
    return f"resume_epoch_{epoch}_iter_{iteration}.pth"


def _fit(workdir: pathlib.Path, crash_at: int | None = None, **options: Any) -> tuple[bool, Any]:
    model = job.ResumeModel(accumulation=ACCUMULATION, crash_at=crash_at)
    trainer = job.make_trainer(workdir, UNIT, TOTAL, ACCUMULATION, **{**BASE, **options})
    return trainer.fit(model, job.ResumeDataModule()), model


def _kept(workdir: pathlib.Path) -> list[str]:
    folder = job.checkpoint_dir(workdir)
    return sorted(p.name for p in folder.glob("*.pth"))


def _entry(i: int) -> retention.RetainedCheckpoint:
    return retention.RetainedCheckpoint(_name(i), 1, i, job.SCORES[i - 1])


# -- the rule ---------------------------------------------------------------------------------


def test_select_kept_rule() -> None:
    entries = [_entry(i) for i in range(1, 10)]
    names = lambda kept: [e.iteration for e in kept]  # noqa: E731
    keep_all = retention.RetentionPolicy()
    assert names(retention.select_kept(entries, keep_all)) == list(range(1, 10))
    last = retention.RetentionPolicy(keep_last=3)
    assert names(retention.select_kept(entries, last)) == [7, 8, 9]
    best_max = retention.RetentionPolicy(keep_best=2, best_metric="score")
    assert names(retention.select_kept(entries, best_max)) == [2, 5, 9]  # 0.9, 0.95, newest
    best_min = retention.RetentionPolicy(keep_best=2, best_metric="score", best_mode="min")
    assert names(retention.select_kept(entries, best_min)) == [3, 6, 9]  # 0.2, 0.1, newest
    both = retention.RetentionPolicy(keep_last=2, keep_best=1, best_metric="score")
    assert names(retention.select_kept(entries, both)) == [5, 8, 9]
    # An unranked checkpoint only counts as one of the last; ties keep the older.
    tied = [*entries[:2], retention.RetainedCheckpoint("x.pth", 1, 10, None)]
    tied.append(retention.RetainedCheckpoint("y.pth", 1, 11, 0.9))
    assert [e.name for e in retention.select_kept(tied, best_max)] == [_name(2), "y.pth"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"chkpt_keep_last": 0}, "chkpt_keep_last must be None or an int >= 1, but received 0"),
        ({"chkpt_keep_best": True}, "chkpt_keep_best must be None or an int >= 1"),
        ({"chkpt_keep_best": 2}, "chkpt_keep_best=2 needs chkpt_best_metric"),
        ({"chkpt_best_metric": ""}, "chkpt_best_metric must be None or the non-empty name"),
        (
            {"chkpt_best_mode": "maximum", "chkpt_best_metric": "score"},
            "chkpt_best_mode must be 'max' or 'min', but received",
        ),
        ({"chkpt_best_mode": "min"}, "chkpt_best_mode='min' needs chkpt_best_metric"),
        ({"chkpt_async": 1}, "chkpt_async must be a bool, but received 1"),
        ({"nonfinite_guard": "yes"}, "nonfinite_guard must be a bool"),
    ],
)
def test_bad_arguments_are_named(options: dict[str, Any], message: str) -> None:
    with pytest.raises((TypeError, ValueError), match=message.replace("(", r"\(")):
        hlt.Trainer(use_cpu=True, **options)


# -- real runs --------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("mode", "best", "kept"),
    [("max", 5, [2, 5, 8, 9]), ("min", 6, [3, 6, 8, 9])],
)
def test_best_k_by_a_maximised_and_a_minimised_metric(
    mode: str, best: int, kept: list[int], tmp_path: pathlib.Path
) -> None:
    ok, _ = _fit(
        tmp_path,
        chkpt_keep_last=2,
        chkpt_keep_best=2,
        chkpt_best_metric="score",
        chkpt_best_mode=mode,
    )
    assert ok
    folder = job.checkpoint_dir(tmp_path)
    assert _kept(tmp_path) == sorted(_name(i) for i in kept)
    assert hlt.find_best_checkpoint(folder) == folder / _name(best)
    assert hlt.find_last_checkpoint(folder) == folder / _name(9)
    index = json.loads((folder / retention.INDEX_NAME).read_text())
    assert index["best"] == _name(best) and index["newest"] == _name(9)
    assert [c["name"] for c in index["checkpoints"]] == [_name(i) for i in kept]
    assert [c["metric"] for c in index["checkpoints"]] == [job.SCORES[i - 1] for i in kept]
    # The record inside the newest checkpoint is the same.
    hlt.register_trainer_types_for_safe_load()
    saved = torch.load(folder / _name(9), weights_only=True)["checkpoint_retention"]
    assert [e["name"] for e in saved["entries"]] == [_name(i) for i in kept]
    # No leftovers: no temporary file, nothing else.
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [retention.INDEX_NAME, *(_name(i) for i in kept)]
    )


@pytest.mark.slow
def test_without_retention_every_checkpoint_is_kept_and_files_are_unchanged(
    tmp_path: pathlib.Path,
) -> None:
    ok, _ = _fit(tmp_path)
    assert ok
    folder = job.checkpoint_dir(tmp_path)
    assert _kept(tmp_path) == sorted(_name(i) for i in range(1, 10))
    assert not (folder / retention.INDEX_NAME).exists()
    hlt.register_trainer_types_for_safe_load()
    assert "checkpoint_retention" not in torch.load(folder / _name(9), weights_only=True)
    assert hlt.find_best_checkpoint(folder) is None


@pytest.mark.slow
def test_a_resumed_run_keeps_the_same_best_k(tmp_path: pathlib.Path) -> None:
    options = {"chkpt_keep_best": 2, "chkpt_best_metric": "score"}
    ok, reference = _fit(tmp_path / "reference", **options)
    assert ok
    expected = _kept(tmp_path / "reference")
    assert expected == sorted(_name(i) for i in (2, 5, 9))

    # Crash after iteration 6 was saved (which dropped 3 and 4); resume; crash again; finish.
    workdir = tmp_path / "resumed"
    ok, _ = _fit(workdir, crash_at=13, **options)
    assert not ok
    assert _kept(workdir) == sorted(_name(i) for i in (2, 5, 6))
    ok, _ = _fit(workdir, crash_at=16, **options)
    assert not ok
    ok, model = _fit(workdir, **options)
    assert ok
    assert _kept(workdir) == expected
    for key, value in reference.net.state_dict().items():
        assert torch.equal(model.net.state_dict()[key], value), key


@pytest.mark.slow
def test_leftovers_of_a_crash_after_a_durable_save_are_deleted_on_resume(
    tmp_path: pathlib.Path,
) -> None:
    # A crash between a durable save and its deletions leaves the dropped files behind: the
    # record in the new checkpoint names them, and the resumed run deletes them.
    options = {"chkpt_keep_last": 1}
    ok, _ = _fit(tmp_path, crash_at=9, **options)  # iterations 1..4 saved, 5 crashes
    assert not ok
    folder = job.checkpoint_dir(tmp_path)
    assert _kept(tmp_path) == [_name(4)]
    hlt.register_trainer_types_for_safe_load()
    record = torch.load(folder / _name(4), weights_only=True)["checkpoint_retention"]
    assert record["pending_deletion"] == [_name(3)]
    # Put the file the crash "kept" back, plus a checkpoint the run never recorded.
    torch.save({}, folder / _name(3))
    torch.save({}, folder / "resume_epoch_0_iter_0.pth")
    (folder / f".{retention.INDEX_NAME}.x1y2.tmp").write_text("{")  # an index write cut short
    ok, _ = _fit(tmp_path, **options)
    assert ok
    assert _kept(tmp_path) == sorted([_name(9), "resume_epoch_0_iter_0.pth"])
    assert not list(folder.glob(".*"))


# -- SIGKILLed jobs ---------------------------------------------------------------------------


def _start(workdir: pathlib.Path, options: dict[str, Any], *extra: str) -> subprocess.Popen[bytes]:
    command = [sys.executable, str(JOB_PATH), str(workdir), UNIT, str(TOTAL), str(ACCUMULATION)]
    command += ["--trainer", json.dumps({**BASE, **options}), *extra]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(workdir / f"launch_{time.monotonic_ns()}.out", "wb") as output:
        return subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdout=output, stderr=subprocess.STDOUT
        )


def _output(workdir: pathlib.Path) -> str:
    return "\n".join(p.read_text() for p in sorted(workdir.glob("launch_*.out")))


def _wait_for(ready: Any, process: subprocess.Popen[bytes], workdir: pathlib.Path) -> None:
    deadline = time.monotonic() + 120
    while not ready():
        if process.poll() is not None:
            pytest.fail(f"the job ended too early:\n{_output(workdir)}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("timed out")
        time.sleep(0.005)


def _batches_of(workdir: pathlib.Path, pid: int) -> int:
    path = workdir / "batches.jsonl"
    if not path.exists():
        return 0
    lines = path.read_text().split("\n")[:-1]
    return sum(json.loads(line)["pid"] == pid for line in lines)


@pytest.mark.slow
@pytest.mark.parametrize("asynchronous", [False, True])
def test_retention_across_kills_and_resumes_is_exact(
    asynchronous: bool, tmp_path: pathlib.Path
) -> None:
    options = {
        "chkpt_keep_last": 1,
        "chkpt_keep_best": 2,
        "chkpt_best_metric": "score",
        "chkpt_best_mode": "min",
        "chkpt_async": asynchronous,
    }
    ok, reference = _fit(tmp_path / "reference", **options)
    assert ok
    expected = _kept(tmp_path / "reference")
    assert expected == sorted(_name(i) for i in (3, 6, 9))

    workdir = tmp_path / "killed"
    workdir.mkdir()
    for batches, delay in ((7, 0.013), (9, 0.031)):
        process = _start(workdir, options, "--step-sleep", "0.02", "--save-sleep", "0.01")
        _wait_for(lambda p=process, b=batches: _batches_of(workdir, p.pid) >= b, process, workdir)
        time.sleep(delay)
        os.kill(process.pid, signal.SIGKILL)
        assert process.wait(timeout=60) == -signal.SIGKILL
        # The newest checkpoint is always readable and its record names files on disk.
        newest = hlt.find_last_checkpoint(job.checkpoint_dir(workdir))
        assert newest is not None
        hlt.register_trainer_types_for_safe_load()
        record = torch.load(newest, weights_only=True)["checkpoint_retention"]
        for entry in record["entries"]:
            assert (newest.parent / entry["name"]).is_file(), (entry, _kept(workdir))
    assert "Traceback" not in _output(workdir), _output(workdir)
    ok, model = _fit(workdir, **options)
    assert ok
    assert _kept(workdir) == expected
    folder = job.checkpoint_dir(workdir)
    assert hlt.find_best_checkpoint(folder) == folder / _name(6)
    for key, value in reference.net.state_dict().items():
        assert torch.equal(model.net.state_dict()[key], value), key


class SaveWhenBetter(job.ResumeModel):
    """Vetoes every save whose score is not a new maximum (Model.should_save_checkpoint)."""

    def __init__(self) -> None:
        super().__init__(accumulation=ACCUMULATION)
        self.best = -1.0

    def should_save_checkpoint(self) -> bool:
        score = self.metrics["score"]
        better, self.best = score > self.best, max(score, self.best)
        return better


@pytest.mark.slow
def test_the_model_can_veto_saves(tmp_path: pathlib.Path) -> None:
    trainer = job.make_trainer(tmp_path, UNIT, TOTAL, ACCUMULATION, **BASE)
    assert trainer.fit(SaveWhenBetter(), job.ResumeDataModule())
    # Scores 0.5, 0.9, 0.2, 0.7, 0.95, ...: new maxima at iterations 1, 2 and 5.
    assert _kept(tmp_path) == sorted(_name(i) for i in (1, 2, 5))
