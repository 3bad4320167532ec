"""Shared helpers of the pyblaze tests: a tiny classifier and tiny data sets."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import pyblaze.nn as xnn


class TinyClassifier(xnn.Estimator, nn.Module):
    __engine__ = xnn.SupervisedEngine

    def __init__(self, in_dim: int = 4, num_classes: int = 3) -> None:
        super().__init__()
        self.fc = nn.Linear(in_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


@pytest.fixture
def make_model() -> Callable[..., TinyClassifier]:
    def factory(seed: int = 0) -> TinyClassifier:
        torch.manual_seed(seed)
        return TinyClassifier()

    return factory


@pytest.fixture
def dataset() -> TensorDataset:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(30, 4, generator=generator)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    return TensorDataset(x, y)
