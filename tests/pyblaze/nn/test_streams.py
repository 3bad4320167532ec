"""pyblaze on streams: fit, evaluate and predict take loaders over an IterableDataset."""

from __future__ import annotations

import os
import pathlib
import signal
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

import helios.trainer as hlt
import pyblaze.nn as xnn


class Stream(IterableDataset):
    """``size`` labelled samples read in order, noise added where they are made."""

    def __init__(self, size: int = 60) -> None:
        generator = torch.Generator().manual_seed(1)
        self.x = torch.randn(size, 4, generator=generator)
        self.y = (self.x[:, 0] > 0).long() + (self.x[:, 1] > 0).long()
        self.part = (0, 1)
        self._next = self._start = 0

    def select_part(self, index: int, count: int) -> None:
        self.part = (index, count)

    def state_dict(self) -> dict[str, int]:
        return {"next": self._next}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._start = state["next"]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        index, count = self.part
        mine = list(range(len(self.x)))[index::count]
        start, self._start = self._start, 0
        for position in range(start, len(mine)):
            self._next = position + 1
            i = mine[position]
            yield self.x[i] + 0.05 * torch.randn(4), self.y[i]


class Net(xnn.Estimator, nn.Module):
    __engine__ = xnn.SupervisedEngine

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class Preempt(xnn.TrainingCallback):
    """Sends this process SIGTERM after one batch of one epoch (a scheduler's preemption)."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch = epoch, batch
        self._epoch = self._batch = 0
        self.num_iterations: list[int | None] = []

    def before_epoch(self, current: int, num_iterations: int | None) -> None:
        self._epoch, self._batch = current + 1, 0
        self.num_iterations.append(num_iterations)

    def after_batch(self, *args: Any) -> None:
        self._batch += 1
        if (self._epoch, self._batch) == (self.epoch, self.batch):
            os.kill(os.getpid(), signal.SIGTERM)


def _fit(root: pathlib.Path, *callbacks: xnn.TrainingCallback) -> tuple[Any, Net]:
    torch.manual_seed(0)
    model = Net()
    history = model.fit(
        DataLoader(Stream(), batch_size=8, num_workers=2),
        val_data=DataLoader(Stream(24), batch_size=8),
        val_iterations=2,
        epochs=3,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
        loss=nn.CrossEntropyLoss(),
        callbacks=list(callbacks),
        trainer_options={"chkpt_root": root, "chkpt_frequency": 1},
        gpu=False,
    )
    return history, model


@pytest.mark.slow
def test_fit_on_a_stream_preempted_mid_epoch_resumes_exactly(tmp_path: pathlib.Path) -> None:
    probe = Preempt(epoch=0, batch=0)
    whole, model = _fit(tmp_path / "whole", probe)
    assert probe.num_iterations == [None, None, None], "a stream has no length"
    assert len(whole) == 3

    with pytest.raises(hlt.Preempted):
        _fit(tmp_path / "run", Preempt(epoch=2, batch=3))  # saved after batch 3 of epoch 2
    resumed, model2 = _fit(tmp_path / "run")
    assert [dict(e) for e in resumed._epochs] == [dict(e) for e in whole._epochs]
    for key, value in model.state_dict().items():
        assert torch.equal(model2.state_dict()[key], value), key


class Inputs(IterableDataset):
    """The inputs of a stream, for ``predict``."""

    def __iter__(self) -> Iterator[torch.Tensor]:
        return (x for x, _ in Stream(20))


def test_evaluate_and_predict_read_a_stream_to_its_end() -> None:
    torch.manual_seed(0)
    model = Net()
    inputs = DataLoader(Inputs(), batch_size=6)
    assert model.predict(inputs, gpu=False, parallel=False).shape == (20, 3)
    assert model.predict(inputs, gpu=False).shape == (20, 3)  # in worker processes
    assert model.predict(inputs, iterations=2, gpu=False, parallel=False).shape == (12, 3)
    labelled = DataLoader(Stream(20), batch_size=6)
    evaluation = model.evaluate(labelled, metrics={"loss": nn.CrossEntropyLoss()}, gpu=False)
    assert evaluation["loss"] > 0


def test_a_bar_without_a_total_counts_what_is_done(capsys: pytest.CaptureFixture[str]) -> None:
    from pyblaze.utils.progress import ProgressBar

    bar = ProgressBar(iter(range(3)))
    assert bar.total is None
    assert list(bar) == [0, 1, 2]
    assert "[Elapsed" in capsys.readouterr().out
