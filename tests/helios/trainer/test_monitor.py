"""The run's monitored metric: early stopping, keep-best and its state across a kill.

``Trainer(monitor=..., monitor_mode=..., monitor_min_delta=...)`` names the metric once; the
default ``Model.have_metrics_improved`` answers from it, checkpoints are ranked by it when
``chkpt_best_metric`` is not given, and its best value is a checkpoint part, so a run
killed with SIGKILL and resumed stops at the same validation as the uninterrupted run.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import warnings
from typing import Any

import pytest
import resume_job as job
import torch
from torch import nn
from torch.utils.data import TensorDataset

import helios.data as hld
import helios.model as hlm
import helios.trainer as hlt
from helios.trainer.monitor import Monitor, MonitoredMetricError, default_mode

JOB_PATH = pathlib.Path(__file__).with_name("resume_job.py")
REPO_ROOT = pathlib.Path(__file__).resolve().parents[3]


class Data(hld.DataModule):
    """8 points, 2 batches an epoch, and a validation split."""

    def setup(self) -> None:
        x = torch.randn(8, 3, generator=torch.Generator().manual_seed(0))
        data = TensorDataset(x, x.sum(dim=1, keepdim=True))
        self._train_dataset = self._create_dataset(data, hld.DataLoaderParams(batch_size=4))
        self._valid_dataset = self._create_dataset(data, hld.DataLoaderParams(batch_size=8))


class ScriptedModel(hlm.Model):
    """A linear regression whose validation ``metrics`` come from a script (one per cycle).

    Args:
        values: ``{metric: [value of cycle 0, value of cycle 1, ...]}``.
    """

    def __init__(self, values: dict[str, list[float]]) -> None:
        super().__init__("scripted")
        self.values = values
        self.validated: list[int] = []

    def setup(self, fast_init: bool = False) -> None:
        self.net = nn.Linear(3, 1)
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=0.01)

    def train_step(self, batch: Any, state: hlt.TrainingState) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.backward(loss)
        self.optimizer_step(self.optimizer)
        return loss

    def on_validation_end(self, validation_cycle: int) -> None:
        self.validated.append(validation_cycle)
        for name, values in self.values.items():
            self.metrics[name] = values[validation_cycle]
        super().on_validation_end(validation_cycle)


class JudgedModel(ScriptedModel):
    """A scripted model that overrides ``have_metrics_improved`` (as Helios 1.2.7 models do).

    Args:
        values: as :py:class:`ScriptedModel`.
        improved: the override's answer (``None``: the default's, the monitor's verdict).
    """

    def __init__(self, values: dict[str, list[float]], improved: Any = None) -> None:
        super().__init__(values)
        self.improved = improved
        self.verdicts: list[bool] = []

    def have_metrics_improved(self) -> bool:
        verdict = super().have_metrics_improved() if self.improved is None else self.improved()
        self.verdicts.append(verdict)
        return verdict


def _trainer(tmp_path: pathlib.Path, **kwargs: Any) -> hlt.Trainer:
    arguments: dict[str, Any] = {
        "total_steps": 10,
        "valid_frequency": 1,
        "use_cpu": True,
        "print_banner": False,
        "enable_deterministic": True,
    }
    arguments.update(kwargs)
    trainer = hlt.Trainer(**arguments)
    trainer.train_exceptions.append(Exception)
    return trainer


def test_early_stopping_follows_the_monitored_metric(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Better, better, worse, equal to the best: two validations without improvement.
    model = JudgedModel({"accuracy": [0.5, 0.8, 0.7, 0.8, 0.9, 0.9]})
    trainer = _trainer(tmp_path, monitor="accuracy", early_stop_cycles=2)
    assert trainer.fit(model, Data())
    assert model.validated == [0, 1, 2, 3]
    assert model.verdicts == [True, True, False, False]
    monitor = trainer.monitor
    assert monitor is not None
    assert (monitor.best, monitor.best_cycle, monitor.stale_cycles) == (0.8, 2, 2)
    assert "stopped early: no improvement in 2 validations (best 'accuracy' 0.8 at " in (
        capsys.readouterr().out
    )


def test_min_delta_and_a_mode_guessed_from_the_name(tmp_path: pathlib.Path) -> None:
    assert default_mode("val_loss") == "min" and default_mode("Val_Error") == "min"
    assert default_mode("accuracy") == "max" and default_mode("f1") == "max"
    # Lower is better; a gain of 0.01 is below the minimum change of 0.05.
    model = JudgedModel({"val_loss": [1.0, 0.8, 0.79, 0.76, 0.5]})
    trainer = _trainer(tmp_path, monitor="val_loss", monitor_min_delta=0.05, early_stop_cycles=2)
    assert trainer.fit(model, Data())
    assert trainer.monitor is not None and trainer.monitor.mode == "min"
    assert model.verdicts == [True, True, False, False]
    assert trainer.monitor.best == 0.8


def test_an_override_of_have_metrics_improved_still_wins(tmp_path: pathlib.Path) -> None:
    # Helios 1.2.7: the model decides. The monitored metric keeps its own best value.
    model = JudgedModel({"accuracy": [0.1, 0.2, 0.3, 0.4]}, improved=lambda: False)
    trainer = _trainer(tmp_path, total_steps=4, monitor="accuracy", early_stop_cycles=3)
    assert trainer.fit(model, Data())
    assert model.validated == [0, 1, 2]
    assert trainer.monitor is not None and trainer.monitor.best == 0.3


def test_early_stop_cycles_with_nothing_to_decide_is_never_silently_ignored(
    tmp_path: pathlib.Path,
) -> None:
    model = ScriptedModel({"accuracy": [0.5] * 4})
    trainer = _trainer(tmp_path, total_steps=4, early_stop_cycles=2)
    with pytest.warns(UserWarning, match=r"early_stop_cycles=2 has no effect.*monitor='accuracy'"):
        assert trainer.fit(model, Data())
    assert model.validated == [0, 1, 2, 3]  # nothing stopped it, as in Helios 1.2.7
    # Without validations nothing is ever judged: said when the Trainer is built.
    with pytest.warns(UserWarning, match=r"early_stop_cycles=2 needs validations"):
        hlt.Trainer(total_steps=4, early_stop_cycles=2)
    with pytest.warns(UserWarning, match=r"monitor='accuracy' needs validations"):
        hlt.Trainer(total_steps=4, monitor="accuracy")
    # An override or a monitor: no warning.
    for kwargs, improved in (({"monitor": "accuracy"}, None), ({}, lambda: True)):
        model = JudgedModel({"accuracy": [0.5] * 2}, improved=improved)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            trainer = _trainer(tmp_path, total_steps=2, early_stop_cycles=2, **kwargs)
            assert trainer.fit(model, Data())


def test_a_monitored_metric_the_first_validation_does_not_write_is_an_error(
    tmp_path: pathlib.Path,
) -> None:
    model = ScriptedModel({"accuracy": [0.5] * 4, "loss": [1.0] * 4})
    trainer = _trainer(tmp_path, monitor="val_acc", early_stop_cycles=2)
    with pytest.raises(
        MonitoredMetricError,
        match=r"monitor='val_acc' is not in the model's metrics table after validation 1 "
        r"\(keys: 'accuracy', 'loss'\)",
    ):
        trainer.fit(model, Data())
    assert model.validated == [0]


def test_a_metric_missing_later_is_one_warning_and_that_validation_is_not_judged() -> None:
    monitor = Monitor("score", "max")
    assert monitor.update({"score": 1.0}, 1) is True
    with pytest.warns(RuntimeWarning, match="missing from the model's metrics table after"):
        assert monitor.update({}, 2) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert monitor.update({}, 3) is None  # once
    assert monitor.stale_cycles == 0
    assert monitor.update({"score": float("nan")}, 4) is False  # never an improvement
    assert monitor.update({"score": torch.tensor(2.0)}, 5) is True
    assert (monitor.best, monitor.best_cycle) == (2.0, 5)


def test_keep_best_ranks_by_the_monitored_metric(tmp_path: pathlib.Path) -> None:
    model = ScriptedModel({"accuracy": [0.5, 0.9, 0.2, 0.7, 0.3]})
    trainer = _trainer(
        tmp_path,
        total_steps=5,
        monitor="accuracy",
        chkpt_frequency=1,
        chkpt_root=tmp_path,
        chkpt_keep_last=1,
    )
    assert trainer.fit(model, Data())
    folder = tmp_path / "scripted"
    # The newest, and the best (chkpt_keep_best defaults to 1 with a monitored ranking).
    assert sorted(p.name for p in folder.glob("*.pth")) == [
        "scripted_epoch_2_iter_4.pth",
        "scripted_epoch_5_iter_10.pth",
    ]
    assert hlt.find_best_checkpoint(folder) == folder / "scripted_epoch_2_iter_4.pth"
    index = json.loads((folder / "checkpoints.json").read_text())
    assert (index["best_metric"], index["best_mode"]) == ("accuracy", "max")


def test_chkpt_best_metric_still_ranks_when_given(tmp_path: pathlib.Path) -> None:
    model = ScriptedModel({"accuracy": [0.5, 0.9, 0.2], "loss": [3.0, 2.0, 1.0]})
    trainer = _trainer(
        tmp_path,
        total_steps=3,
        monitor="accuracy",
        chkpt_best_metric="loss",
        chkpt_best_mode="min",
        chkpt_frequency=1,
        chkpt_root=tmp_path,
    )
    assert trainer.fit(model, Data())
    folder = tmp_path / "scripted"
    assert hlt.find_best_checkpoint(folder) == folder / "scripted_epoch_3_iter_6.pth"


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"monitor_mode": "min"}, ValueError, r"monitor_mode='min' needs monitor"),
        ({"monitor_min_delta": 0.1}, ValueError, r"monitor_min_delta=0.1 needs monitor"),
        ({"monitor": "a", "monitor_mode": "up"}, ValueError, "monitor_mode must be 'max' or"),
        ({"monitor": "a", "monitor_min_delta": -1}, ValueError, "finite number >= 0"),
        ({"monitor": "a", "monitor_min_delta": "1"}, TypeError, "a number >= 0"),
        ({"monitor": ""}, TypeError, "monitor must be None or the non-empty name"),
        (
            {"monitor": "loss", "chkpt_best_mode": "max"},
            ValueError,
            r"chkpt_best_mode='max' contradicts monitor_mode='min'",
        ),
    ],
)
def test_monitor_arguments_are_checked(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        hlt.Trainer(valid_frequency=1, **kwargs)


def test_the_monitor_state_round_trips() -> None:
    monitor = Monitor("score", "min", 0.5)
    monitor.update({"score": 3.0}, 1)
    monitor.update({"score": 2.9}, 2)
    again = Monitor("score", "min", 0.5)
    again.load_state_dict(monitor.state_dict())
    assert again.state_dict() == monitor.state_dict()
    assert (again.best, again.stale_cycles, again.improved) == (3.0, 1, False)
    other = Monitor("accuracy", "max")
    other.load_state_dict(monitor.state_dict())  # another metric: starts afresh
    assert other.best is None


# -- killed with SIGKILL and resumed ---------------------------------------------------------

# resume_job's metrics["score"] after validation c is SCORES[c]: 0.5, 0.9, 0.2, 0.7, 0.95, ...
# With a validation per epoch and early_stop_cycles=2, the run stops after epoch 4 (0.2 and
# 0.7 do not beat 0.9). A resumed run that lost the best value would judge 0.7 an
# improvement and go on to epoch 7.
MONITORED = {"monitor": "score", "early_stop_cycles": 2, "valid_frequency": 1}


def _fit_job(workdir: pathlib.Path, model: job.ResumeModel) -> hlt.Trainer:
    trainer = job.make_trainer(workdir, "epoch", 9, 1, **MONITORED)
    assert trainer.fit(model, job.ResumeDataModule())
    return trainer


@pytest.mark.slow
def test_a_run_killed_with_sigkill_stops_where_the_uninterrupted_one_does(
    tmp_path: pathlib.Path,
) -> None:
    straight_dir, killed_dir = tmp_path / "straight", tmp_path / "killed"
    straight_dir.mkdir()
    killed_dir.mkdir()
    straight = job.ResumeModel()
    straight_trainer = _fit_job(straight_dir, straight)
    assert straight.records[-1]["epoch"] == 4  # stopped early at epoch 4 of 9

    records = killed_dir / "batches.jsonl"
    command = [sys.executable, str(JOB_PATH), str(killed_dir), "epoch", "9", "1"]
    command += ["--step-sleep", "0.05", "--trainer", json.dumps(MONITORED)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(killed_dir / "job.out", "wb") as output:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdout=output, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 120
        # Kill in the middle of epoch 4: after the checkpoint of epoch 3 (0.2: one
        # validation without improvement), before the validation of epoch 4.
        while not any(json.loads(line)["epoch"] == 4 for line in _lines(records) if line.strip()):
            assert process.poll() is None, (killed_dir / "job.out").read_text()
            assert time.monotonic() < deadline, "the job did not reach epoch 4"
            time.sleep(0.005)
        os.kill(process.pid, signal.SIGKILL)
        assert process.wait(timeout=60) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    newest = hlt.find_last_checkpoint(job.checkpoint_dir(killed_dir))
    assert newest is not None and "epoch_3" in newest.name
    hlt.register_trainer_types_for_safe_load()
    saved = torch.load(newest, weights_only=True)
    assert saved["metric_monitor"]["best"] == 0.9 and saved["metric_monitor"]["stale_cycles"] == 1
    assert saved["model_metrics"] == {"score": 0.2}

    resumed = job.ResumeModel()
    resumed_trainer = _fit_job(killed_dir, resumed)
    assert [r["epoch"] for r in resumed.records][-1] == 4
    for key, value in straight.net.state_dict().items():
        assert torch.equal(value, resumed.net.state_dict()[key]), key
    assert resumed_trainer.monitor is not None and straight_trainer.monitor is not None
    assert resumed_trainer.monitor.state_dict() == straight_trainer.monitor.state_dict()
    assert resumed.metrics == straight.metrics == {"score": 0.7}


def _lines(path: pathlib.Path) -> list[str]:
    text = path.read_text() if path.exists() else ""
    return text.split("\n")[:-1]  # the last line may be being written
