"""Small pyblaze estimators, data and callbacks shared by the tests.

The pyblaze counterpart of ``toys`` (kept apart so that helios job scripts do not import
``pyblaze.nn``); importable in the same way. The tests of ``tests/pyblaze`` reach the
common ones through the ``make_model`` and ``dataset`` fixtures of ``tests/conftest.py``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

import pyblaze.nn as xnn


class LinearEstimator(xnn.Estimator, nn.Module):
    """An estimator whose network is one linear layer ``fc``, after dropout if ``dropout``."""

    __engine__ = xnn.SupervisedEngine

    def __init__(self, in_dim: int = 4, out_dim: int = 3, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc = nn.Linear(in_dim, out_dim)
        self.drop = nn.Dropout(dropout) if dropout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x if self.drop is None else self.drop(x))


def three_classes(num_samples: int = 30) -> TensorDataset:
    """Points with 4 features (seed 1) in 3 classes: how many of the first two are positive."""
    x = torch.randn(num_samples, 4, generator=torch.Generator().manual_seed(1))
    return TensorDataset(x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long())


class BatchCounter(xnn.TrainingCallback):
    """Counts the training batches it sees."""

    def __init__(self) -> None:
        self.batches = 0

    def after_batch(self, *args: Any) -> None:
        self.batches += 1


class Crash(xnn.TrainingCallback):
    """Fails in ``after_epoch`` of one epoch (before that epoch's checkpoint is written)."""

    def __init__(self, epoch: int) -> None:
        self.epoch, self.seen = epoch, 0

    def after_epoch(self, metrics: xnn.Evaluation) -> None:
        self.seen += 1
        if self.seen == self.epoch:
            raise RuntimeError("crash")


def row_sums(num_samples: int = 8, features: int = 2) -> TensorDataset:
    """Points from torch's global generator, each with the sum of its features as target."""
    x = torch.randn(num_samples, features)
    return TensorDataset(x, x.sum(1, keepdim=True))
