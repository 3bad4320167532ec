"""A checkpoint folder written by an earlier helios resumes bit-identically today.

``fixtures/chkpt_3f116c7/`` was written by helios at commit 3f116c7 (before the run object
and the checkpoint package), by running this file as a script::

    python tests/helios/trainer/test_resume_fixture_checkpoint.py FOLDER

It is a run stopped after 5 of 9 iterations: the newest checkpoint was saved at iteration
4, in the middle of epoch 2 (3 shuffled batches per epoch), with momentum in the
optimizer, a learning-rate schedule, running losses since the validation at iteration 3,
a retention record and index (keep the last 2, rank by ``score``), a log file and a CSV
logger (its file, with a path relative to the run's working directory, is in the fixture
too). Every later helios must resume it to the same weights, bit for bit, as a run that was
never interrupted, and continue the retention record and the CSV file the same way.

The run has ``random_seed=7``; when it was written the loaders shuffled by their
``DataLoaderParams`` seed only (the default, 6691). Today the run's seed shuffles a split
left at the default seed, but a checkpoint without the ``loader_seed`` entry resumes with
the order it was written with (:py:mod:`helios.trainer.loader_seed`): the uninterrupted
run it is compared with shuffles that way too (:py:class:`WrittenOrderData`).
"""

from __future__ import annotations

import json
import os
import pathlib
import random
import shutil
import sys
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

import helios.data as hld
import helios.model as hlm
import helios.trainer as hlt
from helios.loggers import CSVLogger

FIXTURE = pathlib.Path(__file__).with_name("fixtures") / "chkpt_3f116c7"
SAVE_NAME = "fixture"
STOPPED_AT = 5
TOTAL_STEPS = 9


class _Samples(Dataset):
    def __init__(self, size: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.x = torch.randn(size, 3, generator=generator)
        self.y = torch.randn(size, 1, generator=generator)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[index], self.y[index]


class FixtureData(hld.DataModule):
    """10 shuffled samples in batches of 4 (3 batches an epoch), 4 for validation."""

    def setup(self) -> None:
        params = hld.DataLoaderParams(batch_size=4, shuffle=True, drop_last=False)
        self._train_dataset = self._create_dataset(_Samples(10, 1234), params)
        valid = hld.DataLoaderParams(batch_size=2)
        self._valid_dataset = self._create_dataset(_Samples(4, 99), valid)


class WrittenOrderData(FixtureData):
    """``FixtureData`` shuffled as when the fixture was written: by the loaders' own seed."""

    @property
    def run_seed(self) -> int | None:
        return None

    @run_seed.setter
    def run_seed(self, seed: int | None) -> None:
        pass


class FixtureModel(hlm.Model):
    """An MLP with dropout, SGD with momentum and a step schedule; draws from every RNG."""

    def __init__(self) -> None:
        super().__init__(SAVE_NAME)
        self.trained: list[int] = []  # the global iterations this process trained

    def setup(self, fast_init: bool = False) -> None:
        self.net = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, 1))
        self.net.to(self.device)
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=0.05, momentum=0.9)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=3, gamma=0.5)

    def train(self) -> None:
        self.net.train()

    def eval(self) -> None:
        self.net.eval()

    def train_step(self, batch: Any, state: hlt.TrainingState) -> None:
        self.trained.append(state.global_iteration)
        x, y = batch
        shift = 0.1 * random.random() + 0.1 * float(np.random.rand())
        target = y + shift + 0.1 * torch.randn_like(y)
        loss = nn.functional.mse_loss(self.net(x), target)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        self._loss_items["loss"] = loss.detach()

    def on_validation_start(self, validation_cycle: int) -> None:
        super().on_validation_start(validation_cycle)
        self._val_scores["loss"] = 0.0

    def valid_step(self, batch: Any, step: int) -> None:
        x, y = batch
        self._val_scores["loss"] += float(nn.functional.mse_loss(self.net(x), y))

    def on_validation_end(self, validation_cycle: int) -> None:
        self.metrics["score"] = -self._val_scores["loss"]
        super().on_validation_end(validation_cycle)


def make_trainer(root: pathlib.Path, total_steps: int) -> hlt.Trainer:
    """The Trainer of the fixture's run; the CSV logger's path is relative to the cwd."""
    return hlt.Trainer(
        run_name="fixture",
        train_unit="iteration",
        total_steps=total_steps,
        valid_frequency=3,
        chkpt_frequency=2,
        use_cpu=True,
        random_seed=7,
        chkpt_root=root / "chkpt",
        enable_file_logging=True,
        log_path=root / "logs",
        print_banner=False,
        loggers=[CSVLogger("metrics.csv")],
        chkpt_keep_last=2,
        chkpt_best_metric="score",
    )


def _fit(root: pathlib.Path, total_steps: int, data: FixtureData | None = None) -> FixtureModel:
    model = FixtureModel()
    trainer = make_trainer(root, total_steps)
    trainer.train_exceptions.append(Exception)
    assert trainer.fit(model, data or FixtureData())
    return model


def _weights(model: FixtureModel) -> dict[str, torch.Tensor]:
    return {
        **{f"net.{k}": v for k, v in model.net.state_dict().items()},
        **{
            f"momentum.{i}": s["momentum_buffer"]
            for i, s in model.optimizer.state_dict()["state"].items()
        },
    }


def _csv_rows(root: pathlib.Path) -> list[list[str]]:
    lines = (root / "metrics.csv").read_text().splitlines()
    # epoch_time (wall-clock seconds) differs between any two runs.
    header = lines[0].split(",")
    keep = [i for i, name in enumerate(header) if name != "epoch_time"]
    return [[row.split(",")[i] if i < len(row.split(",")) else "" for i in keep] for row in lines]


def _retention(root: pathlib.Path) -> dict[str, Any]:
    index = json.loads((root / "chkpt" / SAVE_NAME / "checkpoints.json").read_text())
    return {k: v for k, v in index.items() if k != "version"}


def test_the_fixture_is_a_mid_epoch_checkpoint_of_the_stopped_run() -> None:
    folder = FIXTURE / "chkpt" / SAVE_NAME
    newest = hlt.find_last_checkpoint(folder)
    assert newest is not None and newest.name == f"{SAVE_NAME}_epoch_2_iter_4.pth"
    hlt.register_trainer_types_for_safe_load()
    saved = torch.load(newest, weights_only=True)
    assert saved["training_state"].dataset_iter == 1
    assert saved["running_losses"]
    assert saved["checkpoint_retention"]["entries"]
    assert saved["loggers"][0]["path"] == "metrics.csv"


@pytest.mark.slow
def test_a_checkpoint_of_an_earlier_helios_resumes_bit_identically(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    resumed, straight = tmp_path / "resumed", tmp_path / "straight"
    shutil.copytree(FIXTURE, resumed)
    straight.mkdir()
    monkeypatch.chdir(resumed)
    resumed_model = _fit(resumed, TOTAL_STEPS)
    monkeypatch.chdir(straight)
    straight_model = _fit(straight, TOTAL_STEPS, WrittenOrderData())

    assert resumed_model.trained == list(range(STOPPED_AT, TOTAL_STEPS + 1))
    assert straight_model.trained == list(range(1, TOTAL_STEPS + 1))
    a, b = _weights(resumed_model), _weights(straight_model)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert _retention(resumed) == _retention(straight)
    assert _csv_rows(resumed) == _csv_rows(straight)
    assert resumed_model.metrics == straight_model.metrics


def write_fixture(folder: pathlib.Path) -> None:
    """Write the fixture: the run of :py:func:`make_trainer` stopped after 5 iterations."""
    folder = folder.resolve()
    folder.mkdir(parents=True, exist_ok=False)
    previous = os.getcwd()
    os.chdir(folder)
    try:
        _fit(folder, STOPPED_AT)
    finally:
        os.chdir(previous)
    shutil.rmtree(folder / "logs")  # re-created by the resumed run


if __name__ == "__main__":
    write_fixture(pathlib.Path(sys.argv[1]))
