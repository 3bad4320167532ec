"""Experiment loggers driven by the Trainer, read back with their own readers.

A job logging to a CSV file and an MLflow SQLite store is killed with SIGKILL at a random
moment and run again; what each logger holds must equal what an uninterrupted run logged:
every step once, with the same values. Only the killed run needs a process of its own: the
uninterrupted run and the resumed one run ``resume_job.main`` in the test process.
"""

from __future__ import annotations

import csv
import pathlib
import random
import signal
import subprocess
import sys
import time

import pytest
import resume_job as job

import helios.trainer as hlt
from helios.loggers import CSVLogger

JOB_PATH = pathlib.Path(__file__).with_name("resume_job.py")


def _csv_rows(path: pathlib.Path) -> list[dict[str, str]]:
    """The rows of a CSV log; epoch times (which differ between runs) only as present."""
    with path.open(newline="") as file:
        rows = list(csv.DictReader(file))
    for row in rows:
        row["epoch_time"] = "yes" if row["epoch_time"] else ""
    return rows


def _mlflow_history(workdir: pathlib.Path) -> dict[str, list[tuple[int, float]]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow' / 'mlflow.db'}")
    (run,) = client.search_runs(client.search_experiments()[0].experiment_id)
    return {
        key: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
        for key in run.data.metrics
    }


ARGS = ["iteration", "9", "2", "--loggers", "csv,mlflow"]


def _job(workdir: pathlib.Path, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, str(JOB_PATH), str(workdir), *ARGS, *extra])


@pytest.mark.slow
def test_csv_and_mlflow_hold_every_step_once_after_a_kill_and_resume(
    tmp_path: pathlib.Path,
) -> None:
    reference = tmp_path / "reference"
    reference.mkdir()
    assert job.main([str(reference), *ARGS]) == 0

    workdir = tmp_path / "killed"
    workdir.mkdir()
    first = _job(workdir, "--step-sleep", "0.05")
    records = workdir / "batches.jsonl"
    wanted = random.randint(6, 14)
    deadline = time.monotonic() + 120
    while not records.exists() or len(records.read_text().splitlines()) < wanted:
        assert first.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    assert job.main([str(workdir), *ARGS]) == 0

    expected_rows = _csv_rows(reference / "metrics.csv")
    steps = [int(row["step"]) for row in expected_rows]
    assert steps == sorted(steps) and steps[-1] == 9  # losses, epoch times, validations
    assert _csv_rows(workdir / "metrics.csv") == expected_rows
    expected = _mlflow_history(reference)
    assert {"train/loss", "lr/optimizer", "epoch_time"} <= set(expected)
    resumed = _mlflow_history(workdir)
    assert resumed.keys() == expected.keys()
    for key in ("train/loss", "lr/optimizer"):
        assert resumed[key] == expected[key], key
    # Epoch times differ between runs; their steps do not.
    assert [s for s, _ in resumed["epoch_time"]] == [s for s, _ in expected["epoch_time"]]


def test_loggers_argument_is_checked() -> None:
    with pytest.raises(TypeError, match=r"loggers must be a list"):
        hlt.Trainer(loggers=CSVLogger("x.csv"))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"loggers\[1\] must be a helios.loggers"):
        hlt.Trainer(loggers=[CSVLogger("x.csv"), "mlflow"])  # type: ignore[list-item]


def test_validation_prints_one_line_with_metrics_and_losses(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    class Scored(job.ResumeModel):
        def on_validation_end(self, validation_cycle: int) -> None:
            super().on_validation_end(validation_cycle)
            self.metrics["score"] = 0.5 + validation_cycle

    trainer = job.make_trainer(tmp_path, "epoch", 2, 1, valid_frequency=1)
    assert trainer.fit(Scored(), job.ResumeDataModule())
    lines = capsys.readouterr().out.splitlines()
    validations = [line for line in lines if line.startswith("Validation")]
    # Numbered as the hooks number the cycles (from 0); each number says what it is.
    assert validations[0].startswith(
        "Validation 0 (epoch 1, iteration 3): metrics score 0.5 | train loss "
    )
    assert validations[0].endswith(" (mean of 3 batches)")
    assert validations[1].startswith(
        "Validation 1 (epoch 2, iteration 6): metrics score 1.5 | train loss "
    )
    assert lines[-1] == "Training finished at epoch 2, iteration 6"


def test_fit_logs_a_summary_of_the_run(tmp_path: pathlib.Path) -> None:
    trainer = job.make_trainer(
        tmp_path, "epoch", 1, 1, enable_file_logging=True, log_path=tmp_path / "logs"
    )
    assert trainer.fit(job.ResumeModel(), job.ResumeDataModule())
    (log_file,) = (tmp_path / "logs").iterdir()
    expected = "Run on cpu, precision 32, 1 process(es); networks: net 41 parameters (41 trainable)"
    assert expected in log_file.read_text()
