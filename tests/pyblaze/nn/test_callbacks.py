import pathlib
from collections.abc import Iterator

import pytest
import torch
from torch import nn

import pyblaze.nn as xnn


class scripted_metric:  # noqa: N801 - used like a function
    """A validation metric that returns the given values, one per epoch.

    An object with state: fit's check before training calls a copy of it, so the values
    stay one per epoch.
    """

    def __init__(self, values: list[float]) -> None:
        self.iterator: Iterator[float] = iter(list(values))

    def __call__(self, y_pred: torch.Tensor, y_true: torch.Tensor) -> float:
        return next(self.iterator)


class WeightRecorder(xnn.TrainingCallback):
    def before_training(self, model: nn.Module, num_epochs: int) -> None:
        self.model = model
        self.weights: list[torch.Tensor] = []

    def after_epoch(self, metrics: xnn.Evaluation) -> None:
        self.weights.append(self.model.fc.weight.detach().clone())


class Recorder(xnn.TrainingCallback, xnn.PredictionCallback):
    def __init__(self) -> None:
        self.calls: list[str] = []

    def before_training(self, model: nn.Module, num_epochs: int) -> None:
        self.calls.append(f"before_training({num_epochs})")

    def before_epoch(self, current: int, num_iterations: int) -> None:
        self.calls.append(f"before_epoch({current}, {num_iterations})")

    def after_batch(self, *args: object) -> None:
        value = args[0]
        self.calls.append("after_batch(None)" if value is None else "after_batch(loss)")

    def after_epoch(self, metrics: xnn.Evaluation) -> None:
        self.calls.append(f"after_epoch({sorted(metrics.to_dict())})")

    def after_training(self) -> None:
        self.calls.append("after_training")

    def before_predictions(self, model: nn.Module, num_iterations: int) -> None:
        self.calls.append(f"before_predictions({num_iterations})")

    def after_predictions(self) -> None:
        self.calls.append("after_predictions")


def fit(model, dataset, **kwargs):
    kwargs.setdefault("optimizer", torch.optim.SGD(model.parameters(), lr=0.1))
    kwargs.setdefault("loss", nn.CrossEntropyLoss())
    return model.fit(dataset.loader(batch_size=10), gpu=False, **kwargs)


def test_hook_order(make_model, dataset) -> None:
    recorder = Recorder()
    fit(
        make_model(),
        dataset,
        val_data=dataset.loader(batch_size=16),
        epochs=2,
        callbacks=[recorder],
    )
    epoch = lambda i: [  # noqa: E731
        f"before_epoch({i}, 3)",
        *["after_batch(loss)"] * 3,
        "before_predictions(2)",
        *["after_batch(None)"] * 2,
        "after_predictions",
        "after_epoch(['train_loss', 'val_loss'])",
    ]
    assert recorder.calls == ["before_training(2)", *epoch(0), *epoch(1), "after_training"]


@pytest.mark.parametrize("restore_best", [False, True])
def test_early_stopping(make_model, dataset, capsys, restore_best: bool) -> None:
    model = make_model()
    recorder = WeightRecorder()
    stopper = xnn.EarlyStopping(metric="val_score", patience=2, restore_best=restore_best)
    history = fit(
        model,
        dataset,
        val_data=dataset.loader(batch_size=30),
        epochs=10,
        metrics={"score": scripted_metric([1.0, 0.5, 0.7, 0.8, 0.1])},
        callbacks=[recorder, stopper],
    )
    assert len(history) == 4
    assert history.val_score == [1.0, 0.5, 0.7, 0.8]
    assert "Early stopping after epoch 4 (patience 2)." in capsys.readouterr().out
    expected = recorder.weights[1] if restore_best else recorder.weights[3]
    assert torch.equal(model.fc.weight, expected)
    assert not torch.equal(recorder.weights[1], recorder.weights[3])


def test_early_stopping_maximize_with_summed_metrics(make_model, dataset) -> None:
    stopper = xnn.EarlyStopping(metric=["val_a", "val_b"], patience=1, minimize=False)
    history = fit(
        make_model(),
        dataset,
        val_data=dataset.loader(batch_size=30),
        epochs=10,
        metrics={"a": scripted_metric([1.0, 2.0, 1.0]), "b": scripted_metric([1.0, 0.5, 1.0])},
        callbacks=[stopper],
    )
    # sums 2.0, 2.5, 2.0: the third epoch does not improve
    assert len(history) == 3


def test_early_stopping_on_missing_metric_names_it(make_model, dataset) -> None:
    with pytest.raises(KeyError, match=r"'val_loss', which is not among .*\['train_loss'\]"):
        fit(make_model(), dataset, epochs=2, callbacks=[xnn.EarlyStopping()])


def test_early_stopping_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="patience must be an int >= 1, but received 0"):
        xnn.EarlyStopping(patience=0)
    with pytest.raises(TypeError, match="metric must be a metric name or a list of names"):
        xnn.EarlyStopping(metric=3)  # type: ignore[arg-type]


def test_callbacks_are_reusable_across_fit_calls(make_model, dataset, capsys) -> None:
    model = make_model()
    recorder = Recorder()
    stopper = xnn.EarlyStopping(metric="val_score", patience=1)
    logger = xnn.BatchProgressLogger()
    callbacks = [recorder, stopper, logger]
    first = fit(
        model,
        dataset,
        val_data=dataset.loader(batch_size=30),
        epochs=5,
        metrics={"score": scripted_metric([1.0, 2.0])},
        callbacks=callbacks,
    )
    first_calls = list(recorder.calls)
    recorder.calls.clear()
    second = fit(
        model,
        dataset,
        val_data=dataset.loader(batch_size=30),
        epochs=3,
        metrics={"score": scripted_metric([3.0, 2.0, 1.0])},
        callbacks=callbacks,
    )
    assert len(first) == 2
    assert len(second) == 3  # the stopper starts afresh: 3.0 is not compared with 1.0
    assert recorder.calls[0] == "before_training(3)"
    assert recorder.calls.count("after_training") == 1
    assert first_calls.count("after_epoch(['train_loss', 'val_loss', 'val_score'])") == 2
    out = capsys.readouterr().out
    assert "Epoch 2/5:" in out
    assert "Epoch 3/3:" in out


def test_callback_exception_in_before_epoch_stops_training(make_model, dataset) -> None:
    class StopAtEpoch(xnn.TrainingCallback):
        def before_epoch(self, current: int, num_iterations: int) -> None:
            if current == 2:
                raise xnn.CallbackException("stop")

    recorder = Recorder()
    history = fit(
        make_model(),
        dataset,
        val_data=dataset.loader(batch_size=30),
        epochs=5,
        callbacks=[StopAtEpoch(), recorder],
    )
    assert len(history) == 2
    assert recorder.calls.count("before_epoch(2, 3)") == 1  # later callbacks still get it
    assert recorder.calls.count("before_predictions(1)") == 2
    assert recorder.calls[-1] == "after_training"


def test_model_saver(make_model, dataset, tmp_path: pathlib.Path) -> None:
    model = make_model()
    fit(model, dataset, epochs=2, callbacks=[xnn.ModelSaverCallback(tmp_path / "models")])
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [
        "model_epoch-0.pt",
        "model_epoch-1.pt",
    ]
    saved = torch.load(tmp_path / "models" / "model_epoch-1.pt", weights_only=True)
    assert torch.equal(saved["fc.weight"], model.fc.weight)


def test_learning_rate_schedulers(make_model, dataset) -> None:
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    step = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    fit(model, dataset, epochs=3, optimizer=optimizer, callbacks=[xnn.LearningRateScheduler(step)])
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.125)

    per_batch = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    fit(
        model,
        dataset,
        epochs=1,
        optimizer=optimizer,
        callbacks=[xnn.LearningRateScheduler(per_batch, after_batch=True)],
    )
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.125 / 2**3)

    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, patience=0, factor=0.1)
    fit(
        model,
        dataset,
        epochs=3,
        optimizer=optimizer,
        val_data=dataset.loader(batch_size=30),
        metrics={"score": scripted_metric([1.0, 1.0, 1.0])},
        callbacks=[xnn.LearningRateScheduler(plateau, metric="val_score")],
    )
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01)
    with pytest.raises(ValueError, match=r"metric .* needs after_batch=False"):
        xnn.LearningRateScheduler(plateau, after_batch=True, metric="val_loss")


def test_parameter_scheduler(make_model, dataset) -> None:
    calls = []

    def double(value: float, step: int) -> float:
        calls.append((value, step))
        return value * 2

    parameter = torch.tensor(1.0)
    fit(make_model(), dataset, epochs=3, callbacks=[xnn.ParameterScheduler(parameter, double)])
    assert calls == [(1.0, 0), (2.0, 1), (4.0, 2)]
    assert parameter.item() == 8.0

    calls.clear()
    parameter.fill_(1.0)
    scheduler = xnn.ParameterScheduler(parameter, double, after_batch=True)
    fit(make_model(), dataset, epochs=2, callbacks=[scheduler])
    assert [step for _, step in calls] == [1, 2, 3, 4, 5, 6]
    with pytest.raises(ValueError, match="exactly one element"):
        xnn.ParameterScheduler(torch.zeros(2), double)


def test_tensorboard_tracker_writes_events(make_model, dataset, tmp_path: pathlib.Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tracker = xnn.TensorboardTracker(tmp_path / "run")
    fit(
        make_model(), dataset, epochs=2, val_data=dataset.loader(batch_size=30), callbacks=[tracker]
    )
    tracker.writer.close()
    events = EventAccumulator(str(tmp_path / "run"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert sorted(tags) == ["batch_train_loss", "train_loss", "val_loss"]
    assert [e.step for e in events.Scalars("batch_train_loss")] == list(range(6))
    assert [e.step for e in events.Scalars("val_loss")] == [0, 1]


class NetConfig(xnn.Config):
    hidden: int


class ConfigurableNet(xnn.Configurable, xnn.Estimator, nn.Module):
    __config__ = NetConfig
    __engine__ = xnn.SupervisedEngine

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.fc = nn.Sequential(nn.Linear(4, self.hidden), nn.Linear(self.hidden, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def test_model_saver_uses_configurable_save(dataset, tmp_path: pathlib.Path) -> None:
    model = ConfigurableNet(hidden=5)
    fit(model, dataset, epochs=1, callbacks=[xnn.ModelSaverCallback(tmp_path, "net-{}")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net-0.json", "net-0.pt"]
    loaded = ConfigurableNet.load(tmp_path / "net-0")
    assert loaded.hidden == 5
    assert torch.equal(loaded.fc[0].weight, model.fc[0].weight)
