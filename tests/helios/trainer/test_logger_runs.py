"""Logging never fails training, and a run started again continues its logged runs.

A logger destination that cannot be written fails ``fit`` before anything trains; a logger
that fails while the run trains is one warning, and training (and its checkpoints) goes on.
A job killed with SIGKILL before its first checkpoint and started again continues the same
CSV file and the same MLflow run (read back with their own readers), instead of leaving a
second file and a run stuck in ``RUNNING``.
"""

from __future__ import annotations

import csv
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

from helios.loggers import CSVLogger
from helios.trainer.logger_runs import RECORD_NAME

JOB_PATH = pathlib.Path(__file__).with_name("resume_job.py")


def _fit(workdir: pathlib.Path, logger: Any, model: job.ResumeModel | None = None) -> Any:
    model = model or job.ResumeModel()
    trainer = job.make_trainer(
        workdir, "epoch", 2, 1, valid_frequency=1, print_frequency=1, loggers=[logger]
    )
    return trainer.fit(model, job.ResumeDataModule()), model


@pytest.mark.parametrize("where", ["afile/run.csv", "/proc/helios/run.csv", "a folder"])
def test_a_logger_that_cannot_write_fails_fit_before_training(
    where: str, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "afile").write_text("a file, not a folder")
    (tmp_path / "a folder").mkdir()
    path = pathlib.Path(where) if where.startswith("/") else tmp_path / where
    capsys.readouterr()
    ok, model = _fit(tmp_path, CSVLogger(path))
    assert ok is False
    assert model.records == []  # nothing trained
    err = capsys.readouterr().err
    if where == "a folder":
        assert f"the CSVLogger writes the regular file {path}, but it is not one" in err
    else:
        assert f"the CSVLogger cannot write into {path.parent}" in err


class BreaksTheLogFolder(job.ResumeModel):
    """Replaces the CSV logger's folder with a file once training starts (a failing disk)."""

    def __init__(self, folder: pathlib.Path) -> None:
        super().__init__()
        self.folder = folder

    def on_training_start(self) -> None:
        super().on_training_start()
        if self.folder.is_dir():
            self.folder.rmdir()
        self.folder.write_text("not a folder any more")


def test_a_logger_failing_while_training_is_one_warning_and_training_goes_on(
    tmp_path: pathlib.Path,
) -> None:
    folder = tmp_path / "logs"
    with pytest.warns(RuntimeWarning, match="the CSVLogger failed") as warned:
        ok, model = _fit(tmp_path, CSVLogger(folder / "run.csv"), BreaksTheLogFolder(folder))
    assert ok
    assert sum("the CSVLogger failed" in str(w.message) for w in warned) == 1
    assert len(model.records) == 6  # both epochs trained
    checkpoints = sorted(p.name for p in job.checkpoint_dir(tmp_path).glob("*.pth"))
    assert checkpoints == ["resume_epoch_1_iter_3.pth", "resume_epoch_2_iter_6.pth"]


# -- a run killed before its first checkpoint -------------------------------------------------


def _csv(path: pathlib.Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        rows = list(csv.DictReader(file))
    for row in rows:  # wall-clock seconds differ between runs; their steps do not
        row["epoch_time"] = "yes" if row.get("epoch_time") else ""
    return rows


def _mlflow_runs(workdir: pathlib.Path) -> list[Any]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow' / 'mlflow.db'}")
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def _mlflow_history(workdir: pathlib.Path) -> dict[str, list[tuple[int, float]]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow' / 'mlflow.db'}")
    (run,) = _mlflow_runs(workdir)
    return {
        key: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
        for key in run.data.metrics
        if key != "epoch_time"
    }


def _job(workdir: pathlib.Path, *extra: str) -> subprocess.Popen[bytes]:
    command = [sys.executable, str(JOB_PATH), str(workdir), "iteration", "9", "2"]
    command += ["--loggers", "csv,mlflow", "--chkpt-frequency", "3", *extra]
    output = (workdir / f"job_{time.monotonic_ns()}.out").open("wb")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env)


@pytest.mark.slow
def test_a_run_killed_before_its_first_checkpoint_continues_its_logged_runs(
    tmp_path: pathlib.Path,
) -> None:
    reference = tmp_path / "reference"
    reference.mkdir()
    assert _job(reference).wait(timeout=300) == 0

    workdir = tmp_path / "killed"
    workdir.mkdir()
    first = _job(workdir, "--step-sleep", "0.05")
    records = workdir / "batches.jsonl"
    deadline = time.monotonic() + 120
    # Iteration 2 of 2 batches logged; its first checkpoint is at iteration 3.
    while not records.exists() or len(records.read_text().splitlines()) < 4:
        assert first.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    first.send_signal(signal.SIGKILL)
    assert first.wait(timeout=30) == -signal.SIGKILL
    folder = job.checkpoint_dir(workdir)
    assert not list(folder.glob("*.pth"))
    recorded = json.loads((folder / RECORD_NAME).read_text())["loggers"]
    assert [state["backend"] for state in recorded] == ["csv", "mlflow"]
    (orphan,) = _mlflow_runs(workdir)
    assert orphan.info.status == "RUNNING"

    assert _job(workdir).wait(timeout=300) == 0
    assert sorted(p.name for p in workdir.glob("*.csv")) == ["metrics.csv"]  # one file
    assert _csv(workdir / "metrics.csv") == _csv(reference / "metrics.csv")
    (run,) = _mlflow_runs(workdir)
    assert run.info.run_id == orphan.info.run_id and run.info.status == "FINISHED"
    assert _mlflow_history(workdir) == _mlflow_history(reference)
    assert not (folder / RECORD_NAME).exists()  # the checkpoints hold the logged runs now
    out = "".join(p.read_text() for p in sorted(workdir.glob("job_*.out")))
    assert "CSVLogger: continuing its run 'metrics', which a run of this folder" in out
    assert f"MLflowLogger: continuing its run '{orphan.info.run_id}'" in out
