"""Retention by default: short runs keep every checkpoint (as Helios 1.2.7), long ones do not
pile them up, and every run says in one line what it keeps."""

from __future__ import annotations

import math
import pathlib
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import helios.data as hld
import helios.model as hlm
import helios.trainer as hlt
from helios.trainer.checkpoint import keep_policy


class Data(hld.DataModule):
    def setup(self) -> None:
        x = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
        data = TensorDataset(x, x.sum(dim=1, keepdim=True))
        self._train_dataset = self._create_dataset(data, hld.DataLoaderParams(batch_size=4))
        self._valid_dataset = self._create_dataset(data, hld.DataLoaderParams(batch_size=4))


class Model(hlm.Model):
    """One batch an epoch; ``metrics["score"]`` peaks at epoch 2."""

    def __init__(self) -> None:
        super().__init__("kept")

    def setup(self, fast_init: bool = False) -> None:
        self.net = nn.Linear(2, 1)
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=0.01)

    def train_step(self, batch: Any, state: hlt.TrainingState) -> torch.Tensor:
        loss = nn.functional.mse_loss(self.net(batch[0]), batch[1])
        self.backward(loss)
        self.optimizer_step(self.optimizer)
        return loss

    def on_validation_end(self, validation_cycle: int) -> None:
        self.metrics["score"] = 1.0 if validation_cycle == 1 else 0.1 * validation_cycle / 100
        super().on_validation_end(validation_cycle)


def _fit(tmp_path: pathlib.Path, **kwargs: Any) -> list[str]:
    arguments: dict[str, Any] = {
        "total_steps": 12,
        "valid_frequency": 1,
        "chkpt_frequency": 1,
        "chkpt_root": tmp_path,
        "use_cpu": True,
        "print_banner": False,
    }
    arguments.update(kwargs)
    trainer = hlt.Trainer(**arguments)
    trainer.train_exceptions.append(Exception)
    assert trainer.fit(Model(), Data())
    epochs = [int(p.name.split("_")[2]) for p in (tmp_path / "kept").glob("*.pth")]
    return [f"epoch {e}" for e in sorted(epochs)]


def test_a_short_run_keeps_every_checkpoint_as_helios_127_did(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _fit(tmp_path, total_steps=10) == [f"epoch {e}" for e in range(1, 11)]
    assert (
        "Checkpoints: every checkpoint is kept (this run writes 10 periodic checkpoint(s); "
        "the default for runs of at most 10)" in capsys.readouterr().out
    )
    assert not (tmp_path / "kept" / "checkpoints.json").exists()  # nothing ranked


def test_a_longer_run_keeps_the_newest_three_by_default(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _fit(tmp_path) == ["epoch 10", "epoch 11", "epoch 12"]
    assert (
        "Checkpoints: the newest 3 checkpoint(s) are kept (this run writes 12 periodic "
        "checkpoint(s); the default for runs of over 10; pass chkpt_keep_last=math.inf to keep "
        "every one)" in capsys.readouterr().out
    )


def test_a_longer_run_with_a_monitored_metric_also_keeps_its_best(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _fit(tmp_path, monitor="score") == ["epoch 2", "epoch 10", "epoch 11", "epoch 12"]
    assert "the newest 3 and the best 1 by 'score' checkpoint(s) are kept" in (
        capsys.readouterr().out
    )
    assert hlt.find_best_checkpoint(tmp_path / "kept") == (
        tmp_path / "kept" / "kept_epoch_2_iter_2.pth"
    )


def test_keep_last_math_inf_keeps_every_checkpoint_of_any_run(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert len(_fit(tmp_path, chkpt_keep_last=math.inf)) == 12
    assert "every checkpoint is kept (this run writes 12 periodic checkpoint(s); " in (
        capsys.readouterr().out
    )


def test_given_retention_arguments_decide_alone(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _fit(tmp_path, chkpt_keep_last=5) == [f"epoch {e}" for e in range(8, 13)]
    assert "(this run writes 12 periodic checkpoint(s); as chkpt_keep_last/chkpt_keep_best " in (
        capsys.readouterr().out
    )


def test_the_expected_count_and_the_policy() -> None:
    assert keep_policy.expected_saves(12, 1) == 12
    assert keep_policy.expected_saves(12, 5) == 2
    assert keep_policy.expected_saves(math.inf, 1) == math.inf
    assert keep_policy.expected_saves(math.inf, None) == 0
    unbounded = keep_policy.choose_policy(None, None, None, "max", math.inf, False)
    assert (unbounded.keep_last, unbounded.keep_best) == (keep_policy.AUTO_KEEP_LAST, None)
    short = keep_policy.choose_policy(None, None, "score", "max", 10, True)
    assert not short.prunes and short.best_metric == "score"
    with pytest.raises(TypeError, match="chkpt_keep_last must be None or an int >= 1"):
        hlt.Trainer(chkpt_keep_last=2.5)
