"""fit fails fast on bad validation data, metrics, losses and shapes; loggers and metrics."""

from __future__ import annotations

import csv
import pathlib
import random

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import helios.loggers as hll
import pyblaze.nn as xnn
from helios.trainer.checkpoint.storage import open_folder
from pyblaze_toys import BatchCounter, LinearEstimator


class Regressor(xnn.Estimator, nn.Module):
    __engine__ = xnn.SupervisedEngine

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(4, 1)
        self.drop = nn.Dropout(0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(x))


def _xy(n: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(n, 4, generator=generator)
    return x, x[:, :1] * 2.0


def _loader(*tensors: torch.Tensor, batch_size: int = 10, shuffle: bool = False) -> DataLoader:
    return DataLoader(TensorDataset(*tensors), batch_size=batch_size, shuffle=shuffle)


def _fit(model: Regressor, **kwargs) -> xnn.History:
    x, y = _xy()
    options = {
        "epochs": 2,
        "optimizer": torch.optim.SGD(model.parameters(), lr=0.05),
        "loss": nn.MSELoss(),
        "gpu": False,
        **kwargs,
    }
    return model.fit(_loader(x, y, shuffle=True), **options)


def test_a_validation_loader_of_the_wrong_structure_fails_before_training() -> None:
    x, _ = _xy()
    counter = BatchCounter()
    with pytest.raises(ValueError, match=r"expects \(x, y\) batches") as raised:
        _fit(Regressor(), val_data=_loader(x), callbacks=[counter])
    assert counter.batches == 0
    assert any("check before training" in note for note in raised.value.__notes__)


def test_a_metric_returning_a_vector_fails_before_training() -> None:
    x, y = _xy()
    counter = BatchCounter()
    with pytest.raises(ValueError, match=r"metric 'err' must return a single number"):
        _fit(
            Regressor(),
            val_data=_loader(x, y),
            metrics={"err": lambda p, t: (p - t).abs()},
            callbacks=[counter],
        )
    assert counter.batches == 0


def test_a_metric_returning_none_is_named() -> None:
    x, y = _xy()

    def forgot_return(prediction: torch.Tensor, target: torch.Tensor) -> None:
        (prediction - target).abs().mean()

    counter = BatchCounter()
    with pytest.raises(
        TypeError, match=r"metric 'mae' \(<function .*forgot_return.*\) returned None"
    ):
        _fit(
            Regressor(), val_data=_loader(x, y), metrics={"mae": forgot_return}, callbacks=[counter]
        )
    assert counter.batches == 0
    # evaluate says the same.
    with pytest.raises(TypeError, match=r"metric 'mae' .* returned None"):
        Regressor().evaluate(_loader(x, y), metrics={"mae": forgot_return}, gpu=False)


@pytest.mark.parametrize(
    ("loss", "match"),
    [
        ("mse", r"loss must be a callable loss\(y_pred, y_true\) .* received 'mse' of type str"),
        (
            nn.MSELoss,
            r"loss must be a loss instance, but received the class MSELoss; pass loss=MSELoss\(\)",
        ),
    ],
)
def test_a_loss_given_as_a_string_or_a_class_is_refused(loss, match) -> None:
    with pytest.raises(TypeError, match=match):
        _fit(Regressor(), loss=loss)


@pytest.mark.parametrize("with_val", [True, False])
def test_targets_that_broadcast_against_the_predictions_are_refused(with_val) -> None:
    x, y = _xy()
    flat = y.view(-1)  # (N,) against predictions (N, 1)
    model = Regressor()
    before = model.fc.weight.detach().clone()
    counter = BatchCounter()
    kwargs = {"val_data": _loader(x, flat)} if with_val else {}
    with pytest.raises(
        ValueError, match=r"predictions of shape \(10, 1\) and targets of shape \(10,\)"
    ):
        model.fit(
            _loader(x, flat),
            epochs=1,
            optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
            loss=nn.MSELoss(),
            gpu=False,
            callbacks=[counter],
            **kwargs,
        )
    assert counter.batches == 0
    assert torch.equal(model.fc.weight, before)


def test_classification_shapes_still_train() -> None:
    model = xnn.Estimator  # noqa: F841 - (readability)

    x, _ = _xy()
    labels = (x[:, 0] > 0).long()
    clf = LinearEstimator(4, 3)
    history = clf.fit(
        _loader(x, labels),
        val_data=_loader(x, labels),
        epochs=1,
        optimizer=torch.optim.SGD(clf.parameters(), lr=0.05),
        loss=nn.CrossEntropyLoss(),
        gpu=False,
    )
    assert len(history) == 1


def test_predict_and_evaluate_refuse_a_bare_tensor_alike() -> None:
    x, y = _xy()
    model = Regressor()
    errors = []
    for call in (model.predict, model.evaluate):
        with pytest.raises(TypeError, match=r"data must be an iterable of batches") as raised:
            call(x, gpu=False)
        errors.append(str(raised.value))
    assert errors[0] == errors[1]
    assert "Tensor of shape (40, 4)" in errors[0]
    with pytest.raises(TypeError, match=r"ndarray of shape \(40, 4\)"):
        model.predict(x.numpy(), gpu=False)
    # What both accept: iterables of batches.
    assert model.predict(x.split(10), gpu=False, parallel=False).shape == (40, 1)
    assert "loss" in model.evaluate(
        list(zip(x.split(10), y.split(10))), metrics={"loss": nn.MSELoss()}, gpu=False
    )


class RandomDataset(Dataset):
    """Validation data whose items draw from every random generator."""

    def __init__(self) -> None:
        self.x, self.y = _xy()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int):
        noise = torch.rand(()) + random.random() + float(np.random.rand())
        return self.x[index] + 0 * noise, self.y[index]


class NoisyRegressor(Regressor):
    """Its training forward draws from torch's (dropout), Python's and NumPy's generators."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            x = x + 0.1 * random.random() + 0.1 * float(np.random.rand())
        return super().forward(x)


def test_the_check_before_training_leaves_the_random_streams_alone() -> None:
    # The check draws nothing from the streams the first epoch's training uses: its losses
    # equal those of a run without validation data (and so without the check).
    random.seed(3)
    np.random.seed(3)
    without = _fit(NoisyRegressor(), epochs=1)
    random.seed(3)
    np.random.seed(3)
    loader = DataLoader(RandomDataset(), batch_size=10, shuffle=True)
    with_val = _fit(NoisyRegressor(), epochs=1, val_data=loader)
    assert with_val.micro_train_loss == without.micro_train_loss
    assert len(with_val.val_loss) == 1


@pytest.mark.parametrize("with_val", [True, False])
def test_epoch_metrics_reach_the_experiment_loggers(tmp_path: pathlib.Path, with_val) -> None:
    x, y = _xy()
    path = tmp_path / "metrics.csv"
    kwargs = {"val_data": _loader(x, y), "metrics": {"mae": nn.L1Loss()}} if with_val else {}
    history = _fit(Regressor(), epochs=3, loggers=[hll.CSVLogger(path)], **kwargs)
    with path.open(newline="") as file:
        rows = list(csv.DictReader(file))
    # One row per step, named as the history names them.
    assert [int(row["step"]) for row in rows] == [4, 8, 12]
    assert [float(row["train_loss"]) for row in rows] == pytest.approx(history.train_loss)
    if with_val:
        assert [float(row["val_mae"]) for row in rows] == pytest.approx(history.val_mae)
        assert [float(row["val_loss"]) for row in rows] == pytest.approx(history.val_loss)
    with path.open(newline="") as file:
        header = next(csv.reader(file))
    assert set(header) == {"step", "train_loss", "lr", "epoch_time"} | (
        {"val_mae", "val_loss"} if with_val else set()
    )
    assert all(row["lr"] and row["epoch_time"] for row in rows)


def test_checkpoints_are_kept_by_a_pyblaze_metric(tmp_path: pathlib.Path) -> None:
    x, y = _xy()
    history = _fit(
        Regressor(),
        epochs=4,
        val_data=_loader(x, y),
        metrics={"mae": nn.L1Loss()},
        trainer_options={
            "chkpt_root": tmp_path,
            "chkpt_frequency": 1,
            "chkpt_keep_last": 1,
            "chkpt_keep_best": 1,
            "chkpt_best_metric": "val_mae",
            "chkpt_best_mode": "min",
        },
    )
    index = open_folder(tmp_path / "pyblaze_Regressor").read_index()
    assert index is not None
    metrics = {entry["epoch"]: entry["metric"] for entry in index["checkpoints"]}
    best_epoch = int(np.argmin(history.val_mae)) + 1
    assert metrics[best_epoch] == pytest.approx(min(history.val_mae))
    assert index["best"] == next(
        e["name"] for e in index["checkpoints"] if e["epoch"] == best_epoch
    )
