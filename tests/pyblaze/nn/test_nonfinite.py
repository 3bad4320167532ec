"""pyblaze's ``fit`` has helios's non-finite guard: same default, same error.

A forward that turns NaN in epoch 2 stops ``fit`` at that batch with
:py:class:`helios.trainer.NonFiniteError`; neither ``ModelSaverCallback`` nor a checkpoint
gets NaN weights (the files on disk are read back). ``nonfinite_guard=False`` in
``trainer_options`` turns it off, as on a ``Trainer``.
"""

from __future__ import annotations

import math
import pathlib

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import helios.trainer as hlt
import pyblaze.nn as xnn


class TurnsNaN(xnn.Estimator, nn.Module):
    """A linear regressor whose output is NaN from batch ``nan_from`` on (counted from 1)."""

    __engine__ = xnn.SupervisedEngine

    def __init__(self, nan_from: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(4, 1)
        self.nan_from = nan_from
        self.batches = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.batches += 1
        out = self.fc(x)
        return out * math.nan if self.batches >= self.nan_from else out


def _fit(model: TurnsNaN, tmp_path: pathlib.Path, **options: object) -> xnn.History:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(40, 4, generator=generator)
    return model.fit(
        DataLoader(TensorDataset(x, x[:, :1] * 2.0), batch_size=10),
        epochs=4,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
        loss=nn.MSELoss(),
        callbacks=[xnn.ModelSaverCallback(tmp_path / "models")],
        trainer_options={"chkpt_root": tmp_path / "chkpt", "chkpt_frequency": 1, **options},
        gpu=False,
    )


def _finite(path: pathlib.Path) -> bool:
    state = torch.load(path, weights_only=True)
    tensors = state.values() if isinstance(state, dict) else [state]
    return all(bool(torch.isfinite(t).all()) for t in tensors if isinstance(t, torch.Tensor))


def test_a_nan_loss_stops_fit_with_helios_error_before_anything_saves_it(
    tmp_path: pathlib.Path,
) -> None:
    model = TurnsNaN(nan_from=6)  # batch 2 of epoch 2 (4 batches an epoch)
    with pytest.raises(hlt.NonFiniteError, match=r"non-finite loss 'loss' = nan at global iter"):
        _fit(model, tmp_path)
    assert model.batches == 6  # stopped at the first NaN batch
    saved = sorted((tmp_path / "models").glob("*.pt"))
    assert [p.name for p in saved] == ["model_epoch-0.pt"]  # epoch 1's, finite
    assert all(_finite(p) for p in saved)
    (folder,) = (tmp_path / "chkpt").iterdir()
    assert [p.name for p in folder.glob("*.pth")] == [f"{folder.name}_epoch_1_iter_4.pth"]


def test_the_guard_is_on_by_default_and_off_as_on_a_trainer(tmp_path: pathlib.Path) -> None:
    model = TurnsNaN(nan_from=6)
    history = _fit(model, tmp_path, nonfinite_guard=False)
    assert model.batches == 16  # all four epochs, in NaN
    assert math.isnan(history.train_loss[-1])
