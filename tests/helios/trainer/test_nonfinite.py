"""The non-finite guard: a NaN/inf loss or model state stops training and is never saved.

The runs train ``resume_job``'s model (iteration unit, 2 batches per iteration, a checkpoint
every iteration) and inject a NaN or an inf at a known global iteration (batch).
"""

from __future__ import annotations

import pathlib
import re
from typing import Any

import pytest
import resume_job as job
import torch

import helios.trainer as hlt
from helios.trainer.nonfinite import NonFiniteGuard

UNIT, TOTAL, ACCUMULATION = "iteration", 9, 2


class PoisonedModel(job.ResumeModel):
    """Makes the loss (``where="loss"``) or a weight (``where="state"``) non-finite at batch
    ``at``; the weight is poisoned after the loss was computed, so that loss is finite."""

    def __init__(self, at: int, where: str, value: float = float("nan")) -> None:
        super().__init__(accumulation=ACCUMULATION)
        self.at, self.where, self.value = at, where, value

    def train_step(self, batch: Any, state: hlt.TrainingState) -> None:
        if state.global_iteration == self.at and self.where == "loss":
            ids, x, y = batch
            batch = (ids, x * self.value, y)
        super().train_step(batch, state)
        if state.global_iteration == self.at and self.where == "state":
            with torch.no_grad():
                self.net[0].weight[1, 2] = self.value


def _fit(workdir: pathlib.Path, model: job.ResumeModel, **options: Any) -> bool:
    trainer = job.make_trainer(workdir, UNIT, TOTAL, ACCUMULATION, **options)
    trainer.train_exceptions.append(hlt.NonFiniteError)
    return trainer.fit(model, job.ResumeDataModule())


def _assert_every_checkpoint_finite(workdir: pathlib.Path) -> list[str]:
    hlt.register_trainer_types_for_safe_load()
    names = []
    for path in sorted(job.checkpoint_dir(workdir).glob("*.pth")):
        names.append(path.name)
        model = torch.load(path, weights_only=True)["model"]
        for group in (model["net"], model["optimizer"]["state"]):
            for value in group.values():
                tensors = value.values() if isinstance(value, dict) else [value]
                for tensor in tensors:
                    assert torch.isfinite(tensor).all(), path
    return names


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_non_finite_loss_stops_the_run_at_its_step(value: float, tmp_path: pathlib.Path) -> None:
    # Batch 9 is the first batch of iteration 5 (epoch 3): iterations 1-4 are saved.
    model = PoisonedModel(at=9, where="loss", value=value)
    with pytest.raises(hlt.NonFiniteError) as caught:
        _fit(tmp_path, model)
    message = str(caught.value)
    assert caught.value.iteration == 9
    assert "non-finite loss 'loss' = " in message and "at global iteration 9 (epoch 3)" in message
    # x * inf through a linear layer gives inf - inf: the loss may be nan either way.
    assert re.search(r"'loss' = (nan|inf) at", message), message
    assert model.records[-1]["gi"] == 9  # nothing trained after the bad step
    names = _assert_every_checkpoint_finite(tmp_path)
    assert names[-1] == "resume_epoch_3_iter_4.pth"
    assert len(names) == 4
    # The run resumes from the newest good checkpoint.
    resumed = job.ResumeModel(accumulation=ACCUMULATION)
    assert _fit(tmp_path, resumed)
    assert resumed.records[0]["gi"] == 9


@pytest.mark.parametrize("value", [float("nan"), float("-inf")])
def test_a_non_finite_weight_is_never_saved(value: float, tmp_path: pathlib.Path) -> None:
    # Batch 10 ends iteration 5; its loss is finite but the weight is poisoned after it.
    model = PoisonedModel(at=10, where="state", value=value)
    with pytest.raises(hlt.NonFiniteError) as caught:
        _fit(tmp_path, model)
    message = str(caught.value)
    assert "non-finite model state at global iteration 10 (epoch 4)" in message
    assert "state_dict entry 'net.0.weight' holds " in message
    assert "the checkpoint was not written" in message
    names = _assert_every_checkpoint_finite(tmp_path)
    assert names == [f"resume_epoch_{e}_iter_{i}.pth" for e, i in ((1, 1), (2, 2), (2, 3), (3, 4))]
    assert not [p for p in job.checkpoint_dir(tmp_path).iterdir() if p.suffix != ".pth"]


def test_an_unlisted_non_finite_error_makes_fit_return_false(tmp_path: pathlib.Path) -> None:
    trainer = job.make_trainer(tmp_path, UNIT, TOTAL, ACCUMULATION)
    assert not trainer.fit(PoisonedModel(at=3, where="loss"), job.ResumeDataModule())
    assert _assert_every_checkpoint_finite(tmp_path) == ["resume_epoch_1_iter_1.pth"]


def test_the_guard_can_be_switched_off(tmp_path: pathlib.Path) -> None:
    model = PoisonedModel(at=9, where="loss")
    assert _fit(tmp_path, model, nonfinite_guard=False)
    newest = hlt.find_last_checkpoint(job.checkpoint_dir(tmp_path))
    assert newest is not None
    hlt.register_trainer_types_for_safe_load()
    weights = torch.load(newest, weights_only=True)["model"]["net"]
    assert not all(torch.isfinite(t).all() for t in weights.values())


class _Model:
    def __init__(self) -> None:
        self._loss_items: dict[str, Any] = {}

    @property
    def loss_items(self) -> dict[str, Any]:
        return self._loss_items


def test_the_device_path_reads_nothing_back_until_a_boundary(monkeypatch) -> None:
    """Losses off the CPU are recorded on their device; nothing is read back per step."""
    model = _Model()
    guard = NonFiniteGuard(model, collective_device=None)  # type: ignore[arg-type]
    guard.read_cpu_losses_at_once = False  # CPU tensors take the device path
    state = hlt.TrainingState()
    reads: list[str] = []
    for name in ("item", "__bool__", "__float__", "__int__", "tolist", "cpu"):
        original = getattr(torch.Tensor, name)

        def counting(self: torch.Tensor, *args: Any, _name=name, _original=original) -> Any:
            reads.append(_name)
            return _original(self, *args)

        monkeypatch.setattr(torch.Tensor, name, counting)
    losses = [1.0, 2.0, float("inf"), float("nan"), 3.0]
    for step, value in enumerate(losses, start=1):
        state.global_iteration = step
        model._loss_items = {"main": torch.tensor(0.5), "aux": torch.tensor(value)}
        guard.after_step(state, should_log=False)
    assert reads == []
    with pytest.raises(hlt.NonFiniteError, match=r"loss 'aux' = inf at global iteration 3"):
        guard.check(state)
    assert reads  # the boundary reads the record


def test_the_device_path_stacks_many_steps_and_names_the_first_bad_one() -> None:
    model = _Model()
    guard = NonFiniteGuard(model, collective_device=None)  # type: ignore[arg-type]
    guard.read_cpu_losses_at_once = False
    state = hlt.TrainingState()
    for step in range(1, 701):
        state.global_iteration = step
        bad = {300: float("-inf"), 520: float("nan")}.get(step, 1.0)
        model._loss_items = {"loss": torch.tensor(bad), "half": torch.tensor(1.0).half()}
        guard.after_step(state, should_log=False)
    # 2 losses per step: 5 stackings of 256, one chunk per dtype each, 120 not stacked yet.
    assert len(guard._chunks) == 10 and len(guard._pending) == 120
    with pytest.raises(hlt.NonFiniteError, match=r"loss 'loss' = -inf at global iteration 300"):
        guard.check(state)


def test_the_device_path_checks_at_logging_steps() -> None:
    model = _Model()
    guard = NonFiniteGuard(model, collective_device=None)  # type: ignore[arg-type]
    guard.read_cpu_losses_at_once = False
    state = hlt.TrainingState()
    state.global_iteration = 1
    model._loss_items = {"loss": torch.tensor([1.0, float("nan")])}
    guard.after_step(state, should_log=False)
    state.global_iteration = 2
    model._loss_items = {"loss": torch.tensor([1.0, 2.0])}
    with pytest.raises(hlt.NonFiniteError, match=r"loss 'loss' = nan at global iteration 1"):
        guard.after_step(state, should_log=True)
