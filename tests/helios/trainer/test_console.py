"""The console's validation line, bar postfix and running means."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from helios.trainer import console


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (3, "3"),
        (True, "True"),
        (0.083123, "0.08312"),
        (97.2222, "97.22"),
        (12345.6, "1.235e+04"),
        (float("nan"), "nan"),
        (float("inf"), "inf"),
        (torch.tensor(0.5), "0.5"),
        (torch.tensor([7]), "7"),
        ("best", "best"),
    ],
)
def test_format_value(value: Any, text: str) -> None:
    assert console.format_value(value) == text


def test_validation_summary_line() -> None:
    line = console.format_validation_summary(
        {"accuracy": 97.2222, "f1": torch.tensor(0.97111)},
        {"loss": 0.083123},
        cycle=2,
        epoch=3,
        iteration=270,
        batches=90,
    )
    assert line == (
        "Validation 2 (epoch 3, iteration 270): metrics accuracy 97.22, f1 0.9711 | "
        "loss 0.08312 (mean of 90 batches)"
    )
    # Without validation data the line says so; the training means are still labelled.
    line = console.format_validation_summary(
        {}, {"train loss": 0.84}, epoch=2, iteration=44, batches=1, validated=False
    )
    assert line == "No validation data (epoch 2, iteration 44): train loss 0.84 (mean of 1 batch)"


@pytest.mark.parametrize(
    ("metrics", "losses", "kwargs", "line"),
    [
        ({"acc": 0.5}, None, {}, "Validation: metrics acc 0.5"),
        ({}, {"loss": 1.0}, {"iteration": 9}, "Validation (iteration 9): loss 1"),
        ({}, {}, {"cycle": 1}, "Validation 1: no metrics"),
    ],
)
def test_validation_summary_parts_are_optional(
    metrics: dict[str, Any], losses: Any, kwargs: dict[str, Any], line: str
) -> None:
    assert console.format_validation_summary(metrics, losses, **kwargs) == line


def test_bar_postfix_and_progress_line() -> None:
    means = {"loss": 0.41234, "kl": 0.001}
    assert console.format_bar_postfix(means) == {"loss": "0.4123", "kl": "0.001"}
    assert console.format_progress_line("Epoch 2: 120/300", means) == (
        "Epoch 2: 120/300, loss 0.4123, kl 0.001"
    )
    assert console.format_progress_line("Epoch 2: 120/300", {}) == "Epoch 2: 120/300"
