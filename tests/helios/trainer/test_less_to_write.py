"""What a model no longer writes by hand, through a real Trainer.

* ``train_step`` may return its loss (a tensor, or a dict of named losses), logged as if it
  were put in ``_loss_items``;
* the default ``train()``/``eval()`` switch the networks the default ``state_dict`` finds
  (dropout is off during validation), and put back each module's own mode;
* with ``accumulation_steps > 1`` ``Model.backward`` divides the loss and
  ``Model.optimizer_step`` steps (and zeroes) only on an iteration's last batch, so one step
  gives the same weights at any accumulation, and the loss logged is the batch's;
* the base Model's ``metrics`` table is in every checkpoint, so a finished run run again
  finds the metrics of its last validation (the getting-started program's second run).
"""

from __future__ import annotations

import pathlib
import warnings
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import helios.data as hld
import helios.model as hlm
import helios.trainer as hlt
from helios.loggers import CSVLogger


def _points(count: int, seed: int = 0) -> TensorDataset:
    x = torch.randn(count, 4, generator=torch.Generator().manual_seed(seed))
    return TensorDataset(x, (x.sum(dim=1) > 0).long())


class Data(hld.DataModule):
    """``count`` points in batches of ``batch_size`` (in order), validated in one batch."""

    def __init__(self, count: int = 16, batch_size: int = 4) -> None:
        super().__init__()
        self.count, self.batch_size = count, batch_size

    def setup(self) -> None:
        data = _points(self.count)
        self._train_dataset = self._create_dataset(
            data, hld.DataLoaderParams(batch_size=self.batch_size)
        )
        self._valid_dataset = self._create_dataset(data, hld.DataLoaderParams(batch_size=16))


class Classifier(hlm.Model):
    """Written as a newcomer writes it: no state_dict, no train()/eval(), no zero_grad.

    Args:
        returns: what ``train_step`` returns: ``"tensor"``, ``"dict"`` or ``"items"`` (the
            1.2.7 way: put in ``_loss_items``, return nothing).
    """

    def __init__(self, returns: str = "tensor") -> None:
        super().__init__("classifier")
        self.returns = returns
        self.dropout_in_validation: list[bool] = []
        self.logged: list[float] = []

    def setup(self, fast_init: bool = False) -> None:
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 2))
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=0.1)

    def train_step(self, batch: Any, state: hlt.TrainingState) -> Any:
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.backward(loss)
        self.optimizer_step(self.optimizer)
        if self.returns == "tensor":
            return loss
        if self.returns == "dict":
            return {"ce": loss, "twice": 2 * loss.detach().item()}
        self._loss_items["loss"] = loss
        return None

    def on_training_batch_end(self, state: hlt.TrainingState, should_log: bool = False) -> None:
        super().on_training_batch_end(state, should_log)
        self.logged.append(float(torch.as_tensor(next(iter(self._loss_items.values()))).detach()))

    def valid_step(self, batch: Any, step: int) -> None:
        self.dropout_in_validation.append(self.net[1].training)
        x, y = batch
        self._val_scores["correct"] = int((self.net(x).argmax(1) == y).sum())

    def on_validation_end(self, validation_cycle: int) -> None:
        self.metrics["accuracy"] = self._val_scores["correct"] / 16
        self.metrics["cycle"] = np.int64(validation_cycle)  # a NumPy scalar comes back an int
        super().on_validation_end(validation_cycle)


def _trainer(tmp_path: pathlib.Path, **kwargs: Any) -> hlt.Trainer:
    arguments: dict[str, Any] = {
        "train_unit": "epoch",
        "total_steps": 2,
        "valid_frequency": 1,
        "use_cpu": True,
        "print_banner": False,
        "random_seed": 3,
        "enable_deterministic": True,
    }
    arguments.update(kwargs)
    trainer = hlt.Trainer(**arguments)
    trainer.train_exceptions.append(Exception)
    return trainer


# -- train_step returns its loss -------------------------------------------------------------


@pytest.mark.parametrize("returns", ["tensor", "dict", "items"])
def test_a_returned_loss_is_logged_as_if_put_in_the_loss_items(
    returns: str, tmp_path: pathlib.Path
) -> None:
    logger = CSVLogger(tmp_path / "metrics.csv")
    model = Classifier(returns)
    trainer = _trainer(tmp_path, print_frequency=1, loggers=[logger])
    assert trainer.fit(model, Data())
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0].split(",")
    names = {"tensor": ["loss"], "dict": ["ce", "twice"], "items": ["loss"]}[returns]
    assert [c for c in header if c.startswith("train/")] == [f"train/{n}" for n in names]
    assert len(model.logged) == 8 and all(value > 0 for value in model.logged)


def test_returning_something_else_is_one_warning(tmp_path: pathlib.Path) -> None:
    class Odd(Classifier):
        def train_step(self, batch: Any, state: hlt.TrainingState) -> Any:
            super().train_step(batch, state)
            return "done"

        def valid_step(self, batch: Any, step: int) -> Any:
            super().valid_step(batch, step)
            return {"val_loss": 1.0}  # a Lightning habit

    with pytest.warns(UserWarning) as caught:
        assert _trainer(tmp_path).fit(Odd("items"), Data())
    messages = [str(w.message) for w in caught if "ignores" in str(w.message)]
    assert len(messages) == 2  # once per hook, not once per batch
    assert (
        "Odd.train_step returned a str, which the trainer ignores: train_step may" in (messages[0])
    )
    assert (
        "Odd.valid_step returned a dict, which the trainer ignores: store validation"
        in (messages[1])
    )


def test_a_step_that_fails_on_a_batch_names_the_batch_structure(tmp_path: pathlib.Path) -> None:
    class DictPoints(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 8

        def __getitem__(self, index: int) -> dict[str, Any]:
            return {"image": torch.zeros(1, 2, 2), "label": index}

    class DictData(hld.DataModule):
        def setup(self) -> None:
            params = hld.DataLoaderParams(batch_size=4)
            self._train_dataset = self._create_dataset(DictPoints(), params)

    class TupleModel(Classifier):
        def train_step(self, batch: Any, state: hlt.TrainingState) -> Any:
            x, y = (t.to(self.device) for t in batch)  # the keys of a dict: str
            return nn.functional.cross_entropy(self.net(x), y)

    with pytest.raises(AttributeError, match="'str' object has no attribute 'to'") as info:
        _trainer(tmp_path, valid_frequency=None).fit(TupleModel(), DictData())
    assert info.value.__notes__ == [
        "train_step failed on a batch that is a dict with keys 'image' "
        "(Tensor[4, 1, 2, 2] float32 on cpu), 'label' (Tensor[4] int64 on cpu)"
    ]


def test_valid_frequency_without_validation_data_is_one_warning(tmp_path: pathlib.Path) -> None:
    class TrainOnly(Data):
        def setup(self) -> None:
            super().setup()
            self._valid_dataset = None

    with pytest.warns(UserWarning, match=r"valid_frequency=1 but the datamodule has no valid"):
        assert _trainer(tmp_path, total_steps=3).fit(Classifier(), TrainOnly())


# -- default train() and eval() --------------------------------------------------------------


def test_the_default_eval_switches_dropout_off_during_validation(tmp_path: pathlib.Path) -> None:
    model = Classifier()
    assert _trainer(tmp_path).fit(model, Data())
    assert model.dropout_in_validation == [False, False]
    assert model.net.training  # back to training after each validation


def test_train_puts_back_each_modules_own_mode() -> None:
    class Frozen(Classifier):
        def setup(self, fast_init: bool = False) -> None:
            super().setup(fast_init)
            self.backbone = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
            self.backbone.eval()  # frozen: kept in evaluation mode
            self.wrapped = [nn.Dropout(0.1)]

    model = Frozen()
    model.setup()
    model.train()  # before any eval(): left as built
    assert model.net.training and not model.backbone.training
    model.eval()
    assert not model.net.training and not model.wrapped[0].training
    model.eval()  # twice: the modes noted the first time are kept
    model.train()
    assert model.net.training and model.net[1].training and model.wrapped[0].training
    assert not model.backbone.training and not model.backbone[1].training


def test_an_override_of_train_and_eval_still_decides(tmp_path: pathlib.Path) -> None:
    class KeepsDropout(Classifier):
        def eval(self) -> None:  # a 1.2.7 model that never switched
            pass

    model = KeepsDropout()
    assert _trainer(tmp_path).fit(model, Data())
    assert model.dropout_in_validation == [True, True]


# -- gradient accumulation -------------------------------------------------------------------


def _weights_after(
    tmp_path: pathlib.Path, batch_size: int, accumulation: int, returns: str = "tensor"
) -> tuple[dict[str, torch.Tensor], Classifier]:
    torch.manual_seed(0)
    model = Classifier(returns)

    def setup(fast_init: bool = False) -> None:
        Classifier.setup(model, fast_init)
        model.net[1].p = 0.0  # no dropout: the comparison is exact up to rounding

    model.setup = setup  # type: ignore[method-assign]
    trainer = _trainer(
        tmp_path,
        train_unit="iteration",
        total_steps=4,
        accumulation_steps=accumulation,
        valid_frequency=None,
    )
    assert trainer.fit(model, Data(batch_size=batch_size))
    return {k: v.clone() for k, v in model.net.state_dict().items()}, model


def test_the_same_step_gives_the_same_weights_at_any_accumulation(tmp_path: pathlib.Path) -> None:
    # 4 iterations of 4 samples: one batch of 4, two of 2 or four of 1 per step.
    reference, one = _weights_after(tmp_path / "a", batch_size=4, accumulation=1)
    for batch_size, accumulation in ((2, 2), (1, 4)):
        weights, model = _weights_after(tmp_path / f"b{accumulation}", batch_size, accumulation)
        for key, value in reference.items():
            torch.testing.assert_close(weights[key], value, rtol=1e-5, atol=1e-6)
        # The loss logged for each batch is that batch's loss, not the divided one.
        assert len(model.logged) == 4 * accumulation
        losses_of_a_step = model.logged[:accumulation]
        assert sum(losses_of_a_step) / accumulation == pytest.approx(one.logged[0], rel=1e-5)


def test_the_helpers_step_and_clip_only_on_the_last_batch_of_an_iteration(
    tmp_path: pathlib.Path,
) -> None:
    seen: list[tuple[bool, bool, bool]] = []

    class Watched(Classifier):
        def train_step(self, batch: Any, state: hlt.TrainingState) -> Any:
            x, y = batch
            before = self.net[0].weight.detach().clone()
            loss = nn.functional.cross_entropy(self.net(x), y)
            self.backward(loss)
            norm = self.clip_gradients(self.optimizer, max_norm=10.0)
            self.optimizer_step(self.optimizer)
            stepped = not torch.equal(before, self.net[0].weight)
            zeroed = self.net[0].weight.grad is None
            seen.append((norm is not None, stepped, zeroed))
            return loss

    trainer = _trainer(
        tmp_path, train_unit="iteration", total_steps=2, accumulation_steps=3, valid_frequency=None
    )
    assert trainer.fit(Watched(), Data())
    last = (True, True, True)
    assert seen == [(False, False, False), (False, False, False), last] * 2


def test_accumulation_in_the_epoch_unit_is_said_to_be_ignored() -> None:
    with pytest.warns(UserWarning, match=r"accumulation_steps=4 is ignored with train_unit='ep"):
        hlt.Trainer(train_unit="epoch", accumulation_steps=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hlt.Trainer(train_unit="iteration", accumulation_steps=4)


# -- the metrics table is in every checkpoint ------------------------------------------------


def test_a_finished_run_run_again_finds_its_metrics(tmp_path: pathlib.Path) -> None:
    class HandWritten(Classifier):
        # A hand-written state_dict that leaves the metrics out (the getting-started page's).
        def state_dict(self) -> dict[str, Any]:
            return {"net": self.net.state_dict(), "optimizer": self.optimizer.state_dict()}

        def load_state_dict(self, state_dict: dict[str, Any], fast_init: bool = False) -> None:
            self.net.load_state_dict(state_dict["net"])
            self.optimizer.load_state_dict(state_dict["optimizer"])

    options = {"chkpt_frequency": 1, "chkpt_root": tmp_path}
    first = HandWritten()
    assert _trainer(tmp_path, **options).fit(first, Data())
    again = HandWritten()
    assert _trainer(tmp_path, **options).fit(again, Data())  # trains nothing
    assert again.metrics == first.metrics == {"accuracy": first.metrics["accuracy"], "cycle": 1}
    assert type(again.metrics["cycle"]) is int


def test_values_a_checkpoint_cannot_keep_are_left_out_with_one_warning(
    tmp_path: pathlib.Path,
) -> None:
    class Odd(Classifier):
        def on_validation_end(self, validation_cycle: int) -> None:
            super().on_validation_end(validation_cycle)
            self.metrics["report"] = object()
            self.metrics["curve"] = [0.5, torch.tensor([1.0, 2.0]), {"x": np.float32(2.5)}]

    options = {"chkpt_frequency": 1, "chkpt_root": tmp_path}
    with pytest.warns(UserWarning, match=r"cannot keep safely: 'report' \(object\)"):
        assert _trainer(tmp_path, **options).fit(Odd(), Data())
    again = Odd()
    assert _trainer(tmp_path, **options).fit(again, Data())
    assert "report" not in again.metrics
    curve = again.metrics["curve"]
    assert curve[0] == 0.5 and torch.equal(curve[1], torch.tensor([1.0, 2.0]))
    assert curve[2] == {"x": 2.5}
