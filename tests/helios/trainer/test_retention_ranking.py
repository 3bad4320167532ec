"""Which checkpoints retention ranks: the rule for preemption, typos, missing and non-finite
metrics (see :py:mod:`helios.trainer.checkpoint.retention`).

The runs train ``resume_job``'s model in the EPOCH unit (3 batches per epoch) with a
validation and a checkpoint every epoch; the metric of validation cycle ``c`` is
``SCORES[c]`` unless a test says otherwise. A preemption is a real SIGTERM the process sends
itself mid-epoch or mid-validation; the checkpoint written then must not carry the metric
of an earlier validation.
"""

from __future__ import annotations

import math
import os
import pathlib
import signal
from typing import Any

import pytest
import resume_job as job
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import helios.trainer as hlt
import pyblaze.nn as xnn
from helios.trainer.checkpoint.retention import read_index

UNIT = "epoch"
BEST_2 = {"chkpt_keep_best": 2, "chkpt_best_metric": "score", "valid_frequency": 1}


def _name(epoch: int, iteration: int | None = None) -> str:
    return f"{job.SAVE_NAME}_epoch_{epoch}_iter_{3 * epoch if iteration is None else iteration}.pth"


class Preempted(job.ResumeModel):
    """Sends itself SIGTERM in the step of one batch, or in one validation cycle."""

    def __init__(self, at_batch: int | None = None, in_cycle: int | None = None) -> None:
        super().__init__()
        self.at_batch, self.in_cycle = at_batch, in_cycle
        self._cycle = -1

    def train_step(self, batch: Any, state: hlt.TrainingState) -> None:
        super().train_step(batch, state)
        if state.global_iteration == self.at_batch:
            os.kill(os.getpid(), signal.SIGTERM)

    def on_validation_start(self, validation_cycle: int) -> None:
        super().on_validation_start(validation_cycle)
        self._cycle = validation_cycle

    def valid_step(self, batch: Any, step: int) -> None:
        super().valid_step(batch, step)
        if self._cycle == self.in_cycle and step == 0:
            os.kill(os.getpid(), signal.SIGTERM)


def _fit(workdir: pathlib.Path, total: int, model: job.ResumeModel, **options: Any) -> bool:
    trainer = job.make_trainer(workdir, UNIT, total, 1, **{**BEST_2, **options})
    return trainer.fit(model, job.ResumeDataModule())


def _index(workdir: pathlib.Path) -> dict[str, float | None]:
    index = read_index(job.checkpoint_dir(workdir))
    assert index is not None
    return {entry["name"]: entry["metric"] for entry in index["checkpoints"]}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[pathlib.Path, job.ResumeModel]:
    workdir = tmp_path_factory.mktemp("reference")
    model = job.ResumeModel()
    assert _fit(workdir, 5, model)
    return workdir, model


@pytest.mark.parametrize(
    ("where", "preempted"),
    [("mid-epoch 3", {"at_batch": 7}), ("during validation 3", {"in_cycle": 2})],
)
def test_a_preemption_checkpoint_is_not_ranked_with_a_stale_metric(
    where: str,
    preempted: dict[str, int],
    reference: tuple[pathlib.Path, job.ResumeModel],
    tmp_path: pathlib.Path,
) -> None:
    # Scores 0.5, 0.9 after epochs 1 and 2. The preemption checkpoint in epoch 3 would
    # carry the stale 0.9 (tied with epoch 2, newer) and push epoch 1 out of the best 2.
    with pytest.raises(SystemExit) as stopped:
        _fit(tmp_path, 5, Preempted(**preempted))
    assert stopped.value.code == 128 + signal.SIGTERM
    stop = _name(3, 7) if where == "mid-epoch 3" else _name(3)
    assert _index(tmp_path) == {_name(1): 0.5, _name(2): 0.9, stop: None}
    folder = job.checkpoint_dir(tmp_path)
    assert sorted(p.name for p in folder.glob("*.pth")) == sorted([_name(1), _name(2), stop])

    # Resumed to the end, the run keeps what the uninterrupted one kept, bit for bit.
    model = job.ResumeModel()
    assert _fit(tmp_path, 5, model)
    reference_dir, reference_model = reference
    assert _index(tmp_path) == _index(reference_dir) == {_name(2): 0.9, _name(5): 0.95}
    for key, value in reference_model.net.state_dict().items():
        assert torch.equal(model.net.state_dict()[key], value), key


def test_a_best_metric_the_first_validation_does_not_produce_is_an_error_before_deleting(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A fresh run: the error comes at the first validation, before its checkpoint.
    model = job.ResumeModel()
    assert _fit(tmp_path / "fresh", 3, model, chkpt_best_metric="val_acc") is False
    err = capsys.readouterr().err
    assert (
        "chkpt_best_metric='val_acc' is not in the model's metrics table after the first "
        "validation cycle; the metrics there are ['score']" in err
    )
    assert len(model.records) == 3  # one epoch trained, then stopped at its validation
    assert not list(job.checkpoint_dir(tmp_path / "fresh").glob("*.pth"))

    # A resumed run with the typo: the checkpoints of the run before are all kept.
    workdir = tmp_path / "resumed"
    assert _fit(workdir, 2, job.ResumeModel())
    folder = job.checkpoint_dir(workdir)
    before = sorted(p.name for p in folder.glob("*.pth"))
    assert before == [_name(1), _name(2)]
    assert _fit(workdir, 6, job.ResumeModel(), chkpt_keep_best=1, chkpt_best_metric="acc") is False
    assert "chkpt_best_metric='acc' is not in the model's metrics table" in capsys.readouterr().err
    assert sorted(p.name for p in folder.glob("*.pth")) == before


def test_keeping_the_best_without_validations_is_refused_at_once() -> None:
    with pytest.raises(ValueError, match=r"valid_frequency=None never validates"):
        hlt.Trainer(chkpt_keep_best=2, chkpt_best_metric="score", use_cpu=True)


class Scored(job.ResumeModel):
    """Its score after cycle ``c`` is ``scores[c]``; ``None`` leaves the entry out."""

    def __init__(self, scores: list[Any]) -> None:
        super().__init__()
        self.scores = scores

    def on_validation_end(self, validation_cycle: int) -> None:
        super().on_validation_end(validation_cycle)
        score = self.scores[validation_cycle]
        if score is None:
            del self.metrics["score"]
        else:
            self.metrics["score"] = score


@pytest.mark.parametrize("mode", ["max", "min"])
def test_missing_and_non_finite_metrics_leave_a_checkpoint_unranked(
    mode: str, tmp_path: pathlib.Path
) -> None:
    sign = 1.0 if mode == "max" else -1.0
    scores = [
        0.5 * sign,
        0.9 * sign,
        math.inf * sign,  # would be the best of all if ranked
        None,  # missing at a later validation
        0.7 * sign,
        math.nan,
        torch.tensor([1.0, 2.0]),  # not one number
    ]
    with pytest.warns(RuntimeWarning, match="is not a finite number") as warned:
        assert _fit(tmp_path, 7, Scored(scores), chkpt_best_mode=mode)
    assert sum("is not a finite number" in str(w.message) for w in warned) == 1  # once
    # Ranked: epochs 1, 2 and 5; the best two, and the newest (the resume point).
    assert _index(tmp_path) == {_name(2): 0.9 * sign, _name(5): 0.7 * sign, _name(7): None}
    folder = job.checkpoint_dir(tmp_path)
    assert hlt.find_best_checkpoint(folder) == folder / _name(2)


# -- the same rule in pyblaze ----------------------------------------------------------------


class Net(xnn.Estimator, nn.Module):
    __engine__ = xnn.SupervisedEngine

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class SendTerm(xnn.TrainingCallback):
    """Sends this process SIGTERM after one batch of one epoch."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch = epoch, batch
        self._epoch = self._batch = 0

    def before_epoch(self, current: int, num_iterations: int) -> None:
        self._epoch, self._batch = current + 1, 0

    def after_batch(self, *args: Any) -> None:
        self._batch += 1
        if (self._epoch, self._batch) == (self.epoch, self.batch):
            os.kill(os.getpid(), signal.SIGTERM)


def test_pyblaze_ranks_no_preemption_checkpoint_either(tmp_path: pathlib.Path) -> None:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(40, 4, generator=generator)
    data = TensorDataset(x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long())
    torch.manual_seed(0)
    model = Net()
    options = {
        "chkpt_root": tmp_path,
        "chkpt_frequency": 1,
        "chkpt_keep_best": 2,
        "chkpt_best_metric": "train_loss",
        "chkpt_best_mode": "min",
    }
    with pytest.raises(SystemExit):
        model.fit(
            DataLoader(data, batch_size=10),
            epochs=6,
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            loss=nn.CrossEntropyLoss(),
            callbacks=[SendTerm(epoch=3, batch=2)],
            trainer_options=options,
            gpu=False,
        )
    (folder,) = tmp_path.iterdir()
    index = read_index(folder)
    assert index is not None
    ranked = [(e["epoch"], e["iteration"], e["metric"] is not None) for e in index["checkpoints"]]
    # Epochs 1 and 2 are ranked by their train_loss; the one saved inside epoch 3 is not.
    assert ranked == [(1, 4, True), (2, 8, True), (3, 10, False)]
    assert sorted(p.name for p in folder.glob("*.pth")) == sorted(
        e["name"] for e in index["checkpoints"]
    )
