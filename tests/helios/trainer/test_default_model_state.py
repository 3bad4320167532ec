"""A Model that never overrides ``state_dict`` resumes exactly from the default state.

The default ``Model.state_dict``/``load_state_dict`` save and restore the networks,
optimizers, LR schedulers and gradient scalers found among the model's attributes; what it
cannot save is named in one loud warning when the first checkpoint is written.
"""

from __future__ import annotations

import pathlib
import random
import warnings
from typing import Any

import pytest
import resume_job as job
import torch
from torch import nn

import helios.model as hlm
import helios.trainer as hlt
import toys


class PlainModel(hlm.Model):
    """Written as a new user would: no ``state_dict``, no ``load_state_dict``.

    Adam (moments), a step scheduler (the learning rate halves every 2 epochs) and a
    gradient scaler whose scale grows every 2 steps: forgetting any of them on resume shows
    in the weights or in the scaler's state.
    """

    def __init__(self, crash_at: int | None = None) -> None:
        super().__init__("plain")
        self.crash_at = crash_at
        self.trained: list[int] = []

    def setup(self, fast_init: bool = False) -> None:
        self.net = toys.regression_mlp()
        self.net.to(self.device)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=0.05)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, 2, gamma=0.5)
        self.scaler = torch.amp.GradScaler("cpu", init_scale=16.0, growth_interval=2)

    def train(self) -> None:
        self.net.train()

    def eval(self) -> None:
        self.net.eval()

    def train_step(self, batch: Any, state: hlt.TrainingState) -> None:
        if state.global_iteration == self.crash_at:
            raise RuntimeError(f"crash requested at iteration {self.crash_at}")
        _, x, y = batch
        self.optimizer.zero_grad()
        loss = nn.functional.mse_loss(self.net(x), y + 0.1 * torch.randn_like(y))
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self._loss_items["loss"] = loss.detach()
        self.trained.append(state.global_iteration)

    def on_training_epoch_end(self, current_epoch: int) -> None:
        self.scheduler.step()


def _fit(workdir: pathlib.Path, total: int, model: hlm.Model, **kwargs: Any) -> bool:
    trainer = job.make_trainer(workdir, "epoch", total, 1, **kwargs)
    return trainer.fit(model, job.ResumeDataModule())


def _state(model: PlainModel) -> dict[str, Any]:
    return {
        "net": {key: value.clone() for key, value in model.net.state_dict().items()},
        "optimizer": model.optimizer.state_dict(),
        "scheduler": model.scheduler.state_dict(),
        "scaler": model.scaler.state_dict(),
    }


def _assert_same(actual: Any, expected: Any, where: str = "") -> None:
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and actual.keys() == expected.keys(), where
        for key in expected:
            _assert_same(actual[key], expected[key], f"{where}/{key}")
    elif isinstance(expected, list | tuple):
        assert len(actual) == len(expected), where
        for index, (a, e) in enumerate(zip(actual, expected, strict=True)):
            _assert_same(a, e, f"{where}/{index}")
    elif isinstance(expected, torch.Tensor):
        assert torch.equal(actual, expected), f"differs at {where}"
    else:
        assert actual == expected, f"differs at {where}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    model = PlainModel()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # everything is saved: no warning
        assert _fit(tmp_path_factory.mktemp("reference"), 10, model)
    return _state(model)


def test_ten_epochs_equal_five_plus_five_resumed(
    reference: dict[str, Any], tmp_path: pathlib.Path
) -> None:
    assert _fit(tmp_path, 5, PlainModel())
    resumed = PlainModel()
    assert _fit(tmp_path, 10, resumed)
    assert resumed.trained == list(range(16, 31))
    _assert_same(_state(resumed), reference)
    assert resumed.scheduler.get_last_lr() == [0.05 * 0.5**5]

    hlt.register_trainer_types_for_safe_load()
    newest = hlt.find_last_checkpoint(tmp_path / "chkpt" / "plain")
    assert newest is not None
    saved = torch.load(newest, weights_only=True)["model"]
    assert list(saved) == ["net", "optimizer", "scheduler", "scaler"]
    assert list(saved["net"]) == ["0.weight", "0.bias", "3.weight", "3.bias"]


def test_a_crash_mid_epoch_resumes_bit_identically(
    reference: dict[str, Any], tmp_path: pathlib.Path
) -> None:
    assert _fit(tmp_path, 10, PlainModel(crash_at=20)) is False
    resumed = PlainModel()
    assert _fit(tmp_path, 10, resumed)
    assert resumed.trained[0] == 19  # the batch after the checkpoint of epoch 6
    _assert_same(_state(resumed), reference)


class WithExtras(PlainModel):
    def setup(self, fast_init: bool = False) -> None:
        super().setup(fast_init)
        self.average = torch.zeros(3)
        self.draws = random.Random(0)
        self.epochs = 10  # plain settings are not state: no warning for them


class Empty(hlm.Model):
    def __init__(self) -> None:
        super().__init__("empty")

    def setup(self, fast_init: bool = False) -> None:
        pass


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (
            WithExtras(),
            "checkpoints hold net, optimizer, scheduler, scaler, but NOT average (Tensor), "
            "draws (Random)",
        ),
        (Empty(), "the default found no network, optimizer, LR scheduler or gradient scaler"),
    ],
)
def test_state_the_default_cannot_save_is_reported_once_at_the_first_checkpoint(
    model: hlm.Model, expected: str, tmp_path: pathlib.Path
) -> None:
    with pytest.warns(UserWarning) as caught:
        assert _fit(tmp_path, 3, model, enable_file_logging=True, log_path=tmp_path / "logs")
    reports = [w for w in caught if "does not override state_dict()" in str(w.message)]
    assert len(reports) == 1, [str(w.message) for w in caught]
    assert expected in str(reports[0].message)
    (log_file,) = (tmp_path / "logs").iterdir()
    log = log_file.read_text()
    assert log.count("does not override state_dict()") == 1
    # Logged with the first checkpoint, before the second epoch.
    assert log.index(expected) < log.index("Starting epoch 2")


def test_wrappers_are_saved_by_the_module_they_wrap(tmp_path: pathlib.Path) -> None:
    plain = PlainModel()
    plain.device = torch.device("cpu")
    plain.setup()
    expected = plain.state_dict()

    compiled = PlainModel()
    compiled.device = torch.device("cpu")
    compiled.setup()
    inner = compiled.net
    compiled.net = torch.compile(inner, backend="eager")  # type: ignore[assignment]
    compiled.load_state_dict(expected)
    _assert_same(compiled.state_dict(), expected)
    _assert_same(inner.state_dict(), expected["net"])

    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        wrapped = PlainModel()
        wrapped.device = torch.device("cpu")
        wrapped.setup()
        wrapped.raw = wrapped.net  # the same network under two names is saved once
        wrapped.net = nn.parallel.DistributedDataParallel(wrapped.net)  # type: ignore[assignment]
        wrapped.load_state_dict(expected)
        state = wrapped.state_dict()
        assert list(state) == ["net", "optimizer", "scheduler", "scaler"]
        _assert_same(state, expected)
    finally:
        torch.distributed.destroy_process_group()


def test_a_saved_state_that_does_not_match_the_attributes_is_refused() -> None:
    model = PlainModel()
    model.device = torch.device("cpu")
    model.setup()
    state = model.state_dict()
    del state["scheduler"]
    state["old_scheduler"] = {}
    with pytest.raises(KeyError, match=r"not on the model: \['old_scheduler'\].*\['scheduler'\]"):
        model.load_state_dict(state)
    # Testing builds only the networks: the rest of the state is ignored.
    fresh = PlainModel()
    fresh.device = torch.device("cpu")
    fresh.setup(fast_init=True)
    fresh.load_state_dict(state, fast_init=True)
    _assert_same(fresh.net.state_dict(), state["net"])
