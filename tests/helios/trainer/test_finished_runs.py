"""Finished runs stay finished; early stopping counts consecutive cycles, across a resume too.

A run that early stopping or ``should_training_stop`` ended writes a checkpoint at the stop
that records it; running the same ``fit`` again (even with a larger ``total_steps``) trains
nothing and calls neither ``on_training_start`` nor ``on_training_end``. A run that reached
``total_steps`` is finished by its position; a larger ``total_steps`` continues it (see
``test_resume.py``).
"""

from __future__ import annotations

import pathlib
from typing import Any

import pytest
import resume_job as job
import torch

import helios.trainer as hlt

# Whether each validation cycle improved: with early_stop_cycles=2 the count goes 1, 0, 1, 2,
# so training stops after the 4th epoch. Without the reset on an improvement it would go
# 1, 1, 2 and stop after the 3rd.
IMPROVES = [False, True, False, False, False, False, False, False]


class StoppingModel(job.ResumeModel):
    """Improves by the table above; counts the start/end hooks; may stop by request."""

    def __init__(self, stop_at: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stop_at = stop_at
        self.cycle = -1
        self.hooks: list[str] = []
        self.global_iteration = 0

    def on_training_start(self) -> None:
        super().on_training_start()
        self.hooks.append("start")

    def on_training_end(self) -> None:
        self.hooks.append("end")

    def train_step(self, batch: Any, state: hlt.TrainingState) -> None:
        super().train_step(batch, state)
        self.global_iteration = state.global_iteration

    def on_validation_end(self, validation_cycle: int) -> None:
        super().on_validation_end(validation_cycle)
        self.cycle = validation_cycle

    def have_metrics_improved(self) -> bool:
        return IMPROVES[self.cycle]

    def should_training_stop(self) -> bool:
        return self.stop_at is not None and self.global_iteration >= self.stop_at


def _fit(
    workdir: pathlib.Path, unit: str = "epoch", total: int = 10, **kwargs: Any
) -> tuple[bool, StoppingModel]:
    model_args = {k: kwargs.pop(k) for k in ("stop_at", "crash_at") if k in kwargs}
    model = StoppingModel(**model_args)
    defaults: dict[str, Any] = {"valid_frequency": 1, "early_stop_cycles": 2}
    trainer = job.make_trainer(workdir, unit, total, 1, **{**defaults, **kwargs})
    return trainer.fit(model, job.ResumeDataModule()), model


def _weights(model: job.ResumeModel) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in model.net.state_dict().items()}


def _newest(workdir: pathlib.Path) -> dict[str, Any]:
    path = hlt.find_last_checkpoint(job.checkpoint_dir(workdir))
    assert path is not None
    hlt.register_trainer_types_for_safe_load()
    return torch.load(path, weights_only=True)


def test_early_stopping_counts_consecutive_cycles_without_improvement(
    tmp_path: pathlib.Path,
) -> None:
    ok, model = _fit(tmp_path)
    assert ok
    # 4 epochs of 3 batches: the improvement at cycle 1 reset the count.
    assert model.records[-1]["gi"] == 12
    saved = _newest(tmp_path)
    assert saved["training_state"].early_stop_count == 2
    assert saved["run_end"] == {"reason": "early_stopping", "epoch": 4, "iteration": 12}


def test_early_stopping_count_survives_a_resume(tmp_path: pathlib.Path) -> None:
    ok, uninterrupted = _fit(tmp_path / "reference")
    assert ok
    # Crash in epoch 4: the checkpoint of epoch 3 holds one cycle without improvement.
    crashed, _ = _fit(tmp_path, crash_at=11)
    assert crashed is False
    assert _newest(tmp_path)["training_state"].early_stop_count == 1
    ok, resumed = _fit(tmp_path)
    assert ok
    assert [r["gi"] for r in resumed.records] == [10, 11, 12]
    for key, value in _weights(resumed).items():
        assert torch.equal(value, _weights(uninterrupted)[key])


@pytest.mark.parametrize("total", [10, 50])
def test_an_early_stopped_run_stays_finished(
    total: int, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ok, first = _fit(tmp_path)
    assert ok
    for _ in range(2):
        capsys.readouterr()
        ok, again = _fit(tmp_path, total=total)
        assert ok
        assert again.records == []
        assert again.hooks == []  # neither on_training_start nor on_training_end
        assert "already ended by early stopping at epoch 4" in capsys.readouterr().out
        for key, value in _weights(again).items():
            assert torch.equal(value, _weights(first)[key])


def test_a_run_stopped_by_request_has_a_checkpoint_at_the_stop_and_stays_finished(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Iteration unit, no periodic checkpoint before the stop at iteration 5 (mid-epoch).
    ok, first = _fit(
        tmp_path, "iteration", 20, stop_at=5, chkpt_frequency=100, early_stop_cycles=None
    )
    assert ok
    assert first.records[-1]["gi"] == 5
    names = [p.name for p in job.checkpoint_dir(tmp_path).glob("*.pth")]
    assert names == ["resume_epoch_2_iter_5.pth"]
    assert _newest(tmp_path)["run_end"]["reason"] == "should_training_stop"

    capsys.readouterr()
    ok, again = _fit(tmp_path, "iteration", 40, chkpt_frequency=100, early_stop_cycles=None)
    assert ok
    assert again.records == [] and again.hooks == []
    assert "already ended by should_training_stop" in capsys.readouterr().out
    for key, value in _weights(again).items():
        assert torch.equal(value, _weights(first)[key])


def test_a_run_that_reached_total_steps_reruns_without_hooks_and_continues_when_raised(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ok, _ = _fit(tmp_path, total=2, early_stop_cycles=None)
    assert ok
    capsys.readouterr()
    ok, again = _fit(tmp_path, total=2, early_stop_cycles=None)
    assert ok
    assert again.records == [] and again.hooks == []
    assert "already reached total_steps=2 epochs" in capsys.readouterr().out
    assert "run_end" not in _newest(tmp_path)
    ok, longer = _fit(tmp_path, total=3, early_stop_cycles=None)
    assert ok
    assert [r["gi"] for r in longer.records] == [7, 8, 9]
    assert longer.hooks == ["start", "end"]


class TutorialModel(job.ResumeModel):
    """``on_training_end`` as in seed 000's tutorial: it reads the last validation scores
    and the last loss, which exist only in a run that trained."""

    def on_validation_start(self, validation_cycle: int) -> None:
        super().on_validation_start(validation_cycle)
        self._val_scores["total"] = 0
        self._val_scores["correct"] = 0

    def valid_step(self, batch: Any, step: int) -> None:
        super().valid_step(batch, step)
        self._val_scores["total"] += len(batch[0])
        self._val_scores["correct"] += 1

    def on_training_end(self) -> None:
        total = self._val_scores["total"]
        correct = self._val_scores["correct"]
        self.metrics["hparam"] = (100 * correct // total, self._loss_items["loss"].item())


def test_rerunning_the_finished_tutorial_succeeds(tmp_path: pathlib.Path) -> None:
    for run in range(2):
        model = TutorialModel()
        trainer = job.make_trainer(tmp_path, "epoch", 2, 1, valid_frequency=1)
        trainer.train_exceptions = [KeyError]  # the KeyError of the seed must not happen
        assert trainer.fit(model, job.ResumeDataModule())
        assert ("hparam" in model.metrics) == (run == 0)
