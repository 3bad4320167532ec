"""SynchronizationCallback and ModelSharingCallback, between real processes."""

from __future__ import annotations

import json
import multiprocessing
import pathlib
from typing import Any

import torch
from torch import nn

import pyblaze.nn as xnn
from pyblaze.utils import stdmp
from pyblaze_toys import LinearEstimator, row_sums


def _data() -> Any:
    return row_sums().loader(batch_size=4)


class _WeightsAtEpochStart(xnn.TrainingCallback):
    def __init__(self) -> None:
        self.model: nn.Module | None = None
        self.seen: list[torch.Tensor] = []

    def before_training(self, model: nn.Module, num_epochs: int) -> None:
        self.model = model

    def before_epoch(self, current: int, num_iterations: int) -> None:
        assert self.model is not None
        self.seen.append(self.model.fc.weight.detach().clone())


def _train_in_child(push: Any, pull: Any, shared: nn.Module, out: str) -> None:
    model = LinearEstimator(2, 1)
    history = model.fit(
        _data(),
        epochs=10,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        loss=nn.MSELoss(),
        callbacks=[xnn.SynchronizationCallback(push, pull), xnn.ModelSharingCallback(shared)],
    )
    pathlib.Path(out).write_text(json.dumps({"epochs": len(history)}))


def test_synchronization_and_model_sharing_between_processes(tmp_path: pathlib.Path) -> None:
    context = multiprocessing.get_context("fork")
    push, pull = context.Queue(), context.Queue()
    shared = LinearEstimator(2, 1)
    shared.share_memory()
    child = context.Process(
        target=_train_in_child, args=(push, pull, shared, str(tmp_path / "out.json"))
    )
    child.start()
    try:
        reports = []
        for _ in range(3):
            push.put(True)  # allow one epoch
            reports.append(pull.get(timeout=60))
        push.put(False)  # stop before the fourth
        reports.append(pull.get(timeout=60))
        child.join(60)
    finally:
        stdmp.terminate(child)
    assert reports == [True, True, True, False]
    assert child.exitcode == 0
    assert json.loads((tmp_path / "out.json").read_text()) == {"epochs": 3}


def test_model_sharing_loads_the_shared_weights_before_every_epoch() -> None:
    shared, model = LinearEstimator(2, 1), LinearEstimator(2, 1)
    with torch.no_grad():
        shared.fc.weight.fill_(0.25)
    recorder = _WeightsAtEpochStart()
    model.fit(
        _data(),
        epochs=2,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        loss=nn.MSELoss(),
        callbacks=[xnn.ModelSharingCallback(shared), recorder],
    )
    assert [w.tolist() for w in recorder.seen] == [[[0.25, 0.25]]] * 2
    assert not torch.equal(model.fc.weight, shared.fc.weight)  # training changed the copy
