"""What a run reports is true: the training loss means on the console and in the loggers.

The runs train ``resume_job``'s model, which records the loss of every batch; the logged
means are checked against the means of those records, read back from a real CSV file and
from the console.
"""

from __future__ import annotations

import csv
import pathlib
import statistics
from typing import Any

import pytest
import resume_job as job

import helios.data as hld
from helios.loggers import CSVLogger


def _rows(path: pathlib.Path) -> dict[int, dict[str, str]]:
    """The values of the CSV file by step and name (each loss logged once: checked)."""
    with path.open(newline="") as file:
        rows = list(csv.DictReader(file))
    by_step: dict[int, dict[str, str]] = {}
    for row in rows:
        values = by_step.setdefault(int(row.pop("step")), {})
        for key, value in row.items():
            if value:
                assert key == "epoch_time" or key not in values, f"{key} twice at one step"
                values[key] = value
    return by_step


def _losses(model: job.ResumeModel) -> list[float]:
    return [record["draws"][3] for record in model.records]


def _fit(
    workdir: pathlib.Path,
    unit: str,
    total: int,
    accumulation: int,
    model: job.ResumeModel | None = None,
    datamodule: hld.DataModule | None = None,
    **options: Any,
) -> job.ResumeModel:
    model = model or job.ResumeModel(accumulation=accumulation)
    arguments: dict[str, Any] = {
        "loggers": [CSVLogger(workdir / "metrics.csv")],
        "chkpt_root": None,
        "chkpt_frequency": None,
        "valid_frequency": 1,
        **options,
    }
    trainer = job.make_trainer(workdir, unit, total, accumulation, **arguments)
    assert trainer.fit(model, datamodule or job.ResumeDataModule())
    return model


@pytest.mark.parametrize("accumulation", [1, 2, 4])
def test_the_logged_training_loss_is_the_mean_per_batch_at_any_accumulation(
    accumulation: int, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 12 batches in all; a validation every 4 batches, a logged point every iteration.
    iterations = 12 // accumulation
    model = _fit(
        tmp_path,
        "iteration",
        iterations,
        accumulation,
        valid_frequency=4 // accumulation,
        print_frequency=1,
    )
    losses = _losses(model)
    assert len(losses) == 12
    rows = _rows(tmp_path / "metrics.csv")
    for iteration in range(1, iterations + 1):
        batches = iteration * accumulation
        since = 4 * ((batches - 1) // 4)  # the sums restart after each validation
        expected = statistics.fmean(losses[since:batches])
        assert float(rows[iteration]["train/loss"]) == pytest.approx(expected, rel=1e-6)
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("Validation")]
    assert len(lines) == 3
    for cycle, line in enumerate(lines):
        mean = statistics.fmean(losses[4 * cycle : 4 * cycle + 4])
        assert line.startswith(f"Validation {cycle} (epoch ")
        assert line.endswith(f"| train loss {mean:.4g} (mean of 4 batches)")


class TrainOnly(hld.DataModule):
    """``ResumeDataModule`` without its validation split."""

    def setup(self) -> None:
        params = hld.DataLoaderParams(batch_size=job.BATCH_SIZE, shuffle=True)
        self._train_dataset = self._create_dataset(job.CountingDataset(), params)


class SkipsSuper(job.ResumeModel):
    """Computes its score and never calls ``super().on_validation_end``."""

    def on_validation_end(self, validation_cycle: int) -> None:
        self.metrics["score"] = float(validation_cycle)


@pytest.mark.parametrize(
    ("case", "datamodule", "model"),
    [
        ("no validation data", TrainOnly, job.ResumeModel),
        ("on_validation_end skips super()", job.ResumeDataModule, SkipsSuper),
    ],
)
def test_each_validation_reports_the_losses_since_the_previous_one(
    case: str,
    datamodule: type[hld.DataModule],
    model: type[job.ResumeModel],
    tmp_path: pathlib.Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    trained = _fit(tmp_path, "epoch", 3, 1, model(), datamodule())
    losses = _losses(trained)
    assert len(losses) == 9  # 3 batches per epoch
    means = [statistics.fmean(losses[3 * e : 3 * e + 3]) for e in range(3)]
    rows = _rows(tmp_path / "metrics.csv")
    for epoch, mean in enumerate(means, start=1):
        assert float(rows[3 * epoch]["train/loss"]) == pytest.approx(mean, rel=1e-6)
    lines = capsys.readouterr().out.splitlines()
    if case == "no validation data":
        assert not [line for line in lines if line.startswith("Validation")]
        summaries = [line for line in lines if line.startswith("No validation data")]
        assert summaries == [
            f"No validation data (epoch {e}, iteration {3 * e}): train loss {m:.4g} "
            "(mean of 3 batches)"
            for e, m in enumerate(means, start=1)
        ]
    else:
        summaries = [line for line in lines if line.startswith("Validation")]
        assert summaries == [
            f"Validation {c} (epoch {c + 1}, iteration {3 * c + 3}): metrics score {c} | "
            f"train loss {m:.4g} (mean of 3 batches)"
            for c, m in enumerate(means)
        ]


class Numbered(job.ResumeModel):
    """Notes the cycle number every validation hook gets."""

    def __init__(self) -> None:
        super().__init__()
        self.cycles: list[int] = []

    def on_validation_start(self, validation_cycle: int) -> None:
        super().on_validation_start(validation_cycle)
        self.cycles.append(validation_cycle)


def test_hooks_and_console_number_validation_cycles_alike(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = _fit(tmp_path, "epoch", 3, 1, Numbered())
    printed = [
        int(line.split()[1])
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("Validation ")
    ]
    assert model.cycles == [0, 1, 2]
    assert printed == model.cycles
