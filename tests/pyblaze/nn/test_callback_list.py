"""The callback list of train/evaluate/predict, and the data module's loaders."""

import pytest
import torch
from torch import nn

import pyblaze.nn as xnn
from pyblaze.nn._callback_list import CallbackList
from pyblaze.nn._datamodule import LoaderDataModule


class Log(xnn.TrainingCallback, xnn.PredictionCallback):
    """Appends ``name:hook`` to a shared list for every hook it overrides."""

    def __init__(self, name: str, calls: list[str], stop_in: str | None = None) -> None:
        self.name, self.calls, self.stop_in = name, calls, stop_in

    def _log(self, hook: str) -> None:
        self.calls.append(f"{self.name}:{hook}")
        if hook == self.stop_in:
            raise xnn.CallbackException(f"{self.name} stops")

    def before_epoch(self, current: int, num_iterations: int) -> None:
        self._log("before_epoch")

    def after_batch(self, *args: object) -> None:
        self._log("after_batch")


class Quiet(xnn.TrainingCallback):
    """Overrides no per-batch hook."""

    def after_epoch(self, metrics: xnn.Evaluation) -> None:
        pass


def test_hooks_run_in_order_and_a_stop_reaches_every_callback() -> None:
    calls: list[str] = []
    first, second = Log("a", calls, stop_in="before_epoch"), Log("b", calls, "before_epoch")
    callbacks = CallbackList([first, Quiet(), second])
    stop = callbacks.call_stoppable("before_epoch", 0, 3)
    assert calls == ["a:before_epoch", "b:before_epoch"]
    assert stop is not None and stop.message == "a stops"  # the first one wins
    assert callbacks.call_stoppable("after_epoch", xnn.Evaluation({})) is None
    callbacks.after_batch(1.0)
    assert calls[2:] == ["a:after_batch", "b:after_batch"]


def test_after_batch_calls_only_the_callbacks_that_override_it(monkeypatch) -> None:
    calls: list[str] = []
    callbacks = CallbackList([Quiet(), Log("a", calls), xnn.EarlyStopping()])
    quiet = CallbackList([Quiet(), xnn.EarlyStopping()])
    pair = CallbackList([Log("b", calls), Quiet(), Log("c", calls)])
    # Were the base class's after_batch called for the two others, this would count it.
    monkeypatch.setattr(xnn.TrainingCallback, "after_batch", lambda self, *a: calls.append("base"))
    for _ in range(3):
        callbacks.after_batch(0.5)
        callbacks.batch_hook(0.5)
    assert calls == ["a:after_batch"] * 6
    quiet.batch_hook(0.5)
    pair.batch_hook(0.5)
    assert calls[6:] == ["b:after_batch", "c:after_batch"]


def test_select_puts_the_engine_first_and_keeps_one_kind(make_model) -> None:
    engine = xnn.SupervisedEngine(make_model())
    training, prediction = Quiet(), xnn.PredictionProgressLogger()
    chosen = CallbackList.select(xnn.TrainingCallback, engine, [prediction, training])
    assert list(chosen) == [engine, training]
    logger = xnn.BatchProgressLogger()  # rank_zero_only
    assert list(CallbackList.select(xnn.TrainingCallback, engine, [logger], False)) == [engine]


def test_the_loaders_are_built_once_per_run(dataset) -> None:
    datamodule = LoaderDataModule(dataset.loader(batch_size=4), dataset.loader(batch_size=8), 0)
    datamodule.setup()
    train, valid = datamodule.train_dataloader(), datamodule.valid_dataloader()
    assert datamodule.train_dataloader() is train
    assert datamodule.valid_dataloader() is valid
    assert len(train[0]) == 8 and len(valid[0]) == 4
    datamodule.setup()  # the next run builds its own
    assert datamodule.train_dataloader() is not train


@pytest.mark.parametrize("override", [False, True])
def test_fit_with_and_without_batch_hooks_gives_the_same_history(
    make_model, dataset, override: bool
) -> None:
    calls: list[str] = []
    callbacks = [Log("a", calls)] if override else [Quiet()]
    model = make_model()
    history = model.fit(
        dataset.loader(batch_size=10),
        epochs=2,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        loss=nn.CrossEntropyLoss(),
        callbacks=callbacks,
        gpu=False,
    )
    assert len(history.micro_train_loss) == 6
    assert calls == (["a:before_epoch", *["a:after_batch"] * 3] * 2 if override else [])
