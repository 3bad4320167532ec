import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import pyblaze.nn as xnn
import pyblaze.nn.functional as X  # noqa: N812 - the seed's name


def fit(model, dataset, **kwargs):
    kwargs.setdefault("epochs", 2)
    kwargs.setdefault("optimizer", torch.optim.SGD(model.parameters(), lr=0.1))
    kwargs.setdefault("loss", nn.CrossEntropyLoss())
    kwargs.setdefault("gpu", False)
    return model.fit(dataset.loader(batch_size=8), **kwargs)


def test_history_with_validation(make_model, dataset) -> None:
    model = make_model()
    history = fit(
        model,
        dataset,
        epochs=3,
        val_data=dataset.loader(batch_size=16),
        metrics={"accuracy": X.accuracy},
    )
    assert len(history) == 3
    assert history.keys == ["micro_train_loss", "train_loss", "val_accuracy", "val_loss"]
    assert len(history.micro_train_loss) == 3 * 4  # 30 samples in batches of 8
    assert len(history.train_loss) == len(history.val_loss) == len(history.val_accuracy) == 3
    assert all(isinstance(v, float) for v in history.val_loss + history.train_loss)
    assert history.duration > 0


def test_history_without_validation(make_model, dataset) -> None:
    history = fit(make_model(), dataset, epochs=2, metrics={"accuracy": X.accuracy})
    assert len(history) == 2
    assert history.keys == ["micro_train_loss", "train_loss"]
    assert len(history.micro_train_loss) == 8


def test_train_loss_is_the_batch_size_weighted_mean(make_model, dataset) -> None:
    history = fit(make_model(), dataset, epochs=1)
    losses = history.micro_train_loss  # batches of 8, 8, 8 and 6 samples
    expected = (8 * sum(losses[:3]) + 6 * losses[3]) / 30
    assert history.train_loss[0] == pytest.approx(expected)


def test_validation_metrics_are_whole_set_values(make_model, dataset) -> None:
    model = make_model()
    # Validation batches of 7 samples: per-batch averages would differ from the set value.
    history = fit(
        model,
        dataset,
        val_data=dataset.loader(batch_size=7),
        metrics={"accuracy": X.accuracy, "f1": X.f1_score},
    )
    x, y = dataset.tensors
    with torch.no_grad():
        scores = model(x)
    assert history.val_loss[-1] == pytest.approx(nn.CrossEntropyLoss()(scores, y).item())
    assert history.val_accuracy[-1] == pytest.approx(X.accuracy(scores, y).item())
    assert history.val_f1[-1] == pytest.approx(X.f1_score(scores, y).item(), nan_ok=True)


def test_eval_train_and_eval_val(make_model, dataset) -> None:
    history = fit(
        make_model(),
        dataset,
        val_data=dataset.loader(batch_size=16),
        metrics={"accuracy": X.accuracy},
        eval_train=True,
        eval_val=False,
    )
    assert history.keys == ["micro_train_loss", "train_accuracy", "train_loss", "val_accuracy"]


def test_runs_are_reproducible_with_manual_seed(make_model, dataset) -> None:
    histories = []
    for torch_seed in (7, 7, 8):
        model = make_model(seed=3)
        torch.manual_seed(torch_seed)
        histories.append(
            model.fit(
                dataset.loader(batch_size=8, shuffle=True),
                epochs=2,
                optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                loss=nn.CrossEntropyLoss(),
                gpu=False,
            )
        )
    assert histories[0].micro_train_loss == histories[1].micro_train_loss
    # Another torch seed shuffles differently (the Trainer's seed is drawn from torch).
    assert histories[0].micro_train_loss != histories[2].micro_train_loss


def test_evaluate_and_predict(make_model, dataset) -> None:
    model = make_model()
    evaluation = model.evaluate(
        dataset.loader(batch_size=7),
        metrics={"accuracy": X.accuracy, "loss": nn.CrossEntropyLoss()},
        gpu=False,
    )
    x, y = dataset.tensors
    with torch.no_grad():
        scores = model(x)
    assert evaluation.accuracy == pytest.approx(X.accuracy(scores, y).item())
    assert evaluation["loss"] == pytest.approx(nn.CrossEntropyLoss()(scores, y).item())
    assert "accuracy" in evaluation

    predictions = model.predict(TensorDataset(x).loader(batch_size=7), gpu=False)
    assert predictions.shape == (30, 3)
    assert torch.allclose(predictions, scores)
    assert model.predict(TensorDataset(x).loader(batch_size=7), iterations=2).shape == (14, 3)
    assert model.predict(data=x.split(10)).shape == (30, 3)
    assert model.training  # the mode is restored


class AutoencoderEngine(xnn.BaseEngine):
    """A custom engine: batches are inputs only, the target is the input itself."""

    def train_batch(self, data, optimizer, loss):
        optimizer.zero_grad()
        value = loss(self.model(data), data)
        value.backward()
        optimizer.step()
        return value.item()

    def eval_batch(self, data):
        return self.model(data), data


class Autoencoder(xnn.Estimator, nn.Module):
    __engine__ = AutoencoderEngine

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 2), nn.Linear(2, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def test_custom_engine_subclass() -> None:
    torch.manual_seed(0)
    x = torch.randn(32, 4)
    model = Autoencoder()
    assert isinstance(model.engine, AutoencoderEngine)
    assert model.engine is model.engine
    history = model.fit(
        _Rows(x).loader(batch_size=8),
        val_data=_Rows(x).loader(batch_size=16),
        epochs=5,
        optimizer=torch.optim.Adam(model.parameters(), lr=0.05),
        loss=nn.MSELoss(),
        gpu=False,
    )
    assert history.keys == ["micro_train_loss", "train_loss", "val_loss"]
    assert history.val_loss[-1] < history.val_loss[0]
    assert model.predict(_Rows(x).loader(batch_size=10)).shape == (32, 4)


class _Rows(torch.utils.data.Dataset):
    def __init__(self, x: torch.Tensor) -> None:
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.x[index]


def test_gradient_accumulation_steps_the_optimizer_every_k_batches(make_model, dataset) -> None:
    model = make_model()
    steps = []

    class CountingSGD(torch.optim.SGD):
        def step(self, closure=None):
            steps.append(1)
            return super().step(closure)

    history = fit(
        model,
        dataset,
        epochs=1,
        optimizer=CountingSGD(model.parameters(), lr=0.1),
        gradient_accumulation_steps=3,
    )
    assert len(steps) == 2  # after batches 3 and 4 (the last batch of the epoch)
    assert len(history.micro_train_loss) == 4


def test_exceptions_of_batches_propagate(make_model, dataset) -> None:
    model = make_model()

    def broken_loss(y_pred, y_true):
        raise ZeroDivisionError("broken loss")

    with pytest.raises(ZeroDivisionError, match="broken loss"):
        fit(model, dataset, loss=broken_loss)
    assert model.engine.model is model
    with pytest.raises(RuntimeError, match="only inside train"):
        model.engine.train_batch(next(iter(dataset.loader(batch_size=2))), None, None)


def test_arguments_are_checked(make_model, dataset) -> None:
    model = make_model()
    loader = dataset.loader(batch_size=8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match=r"train_data must be a torch.utils.data.DataLoader"):
        model.fit(dataset, optimizer=optimizer, loss=nn.CrossEntropyLoss())
    with pytest.raises(ValueError, match="epochs must be an int >= 1, but received 0"):
        model.fit(loader, epochs=0, optimizer=optimizer, loss=nn.CrossEntropyLoss())
    with pytest.raises(ValueError, match="eval_every=2 is not supported"):
        model.fit(loader, eval_every=2, optimizer=optimizer, loss=nn.CrossEntropyLoss())
    with pytest.raises(TypeError, match=r"callbacks must derive from xnn.TrainingCallback"):
        model.fit(loader, callbacks=[object()], optimizer=optimizer, loss=nn.CrossEntropyLoss())
    with pytest.raises(TypeError, match=r"metrics must be a dict"):
        model.fit(loader, metrics=[X.accuracy], optimizer=optimizer, loss=nn.CrossEntropyLoss())
    with pytest.raises(ValueError, match="val_data uses a WeightedRandomSampler"):
        sampler = torch.utils.data.WeightedRandomSampler([1.0] * 30, 30)
        model.fit(
            loader,
            val_data=dataset.loader(batch_size=8, sampler=sampler),
            optimizer=optimizer,
            loss=nn.CrossEntropyLoss(),
        )
    with pytest.raises(ValueError, match=r"trainer_options may not set \['total_steps'\]"):
        model.fit(
            loader, trainer_options={"total_steps": 3}, optimizer=optimizer, loss=nn.MSELoss()
        )
    with pytest.raises(ValueError, match=r"unknown Trainer arguments \['chkpt_dir'\]"):
        model.fit(
            loader, trainer_options={"chkpt_dir": "x"}, optimizer=optimizer, loss=nn.MSELoss()
        )
    with pytest.raises(
        TypeError,
        match=r"SupervisedEngine.train_batch cannot be called with the keyword arguments "
        r"given to fit \(\['loss'\]\): missing a required argument: 'optimizer'",
    ):
        model.fit(loader, loss=nn.CrossEntropyLoss())
    with pytest.raises(TypeError, match=r"SupervisedEngine.eval_batch .*\['eval_scale'\]"):
        model.fit(loader, val_data=loader, optimizer=optimizer, loss=nn.MSELoss(), eval_scale=2)
    with pytest.raises(TypeError, match="first argument or as data="):
        model.fit(optimizer=optimizer, loss=nn.CrossEntropyLoss())
    with pytest.raises(ValueError, match="iterations must be None or an int >= 1"):
        model.evaluate(loader, iterations=0)


def test_missing_engine_is_a_clear_error() -> None:
    class NoEngine(xnn.Estimator, nn.Module):
        pass

    with pytest.raises(
        TypeError, match="has no default engine: set the class attribute __engine__"
    ):
        NoEngine().fit(None)
