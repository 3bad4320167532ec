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
        cycle=3,
        epoch=3,
        iteration=270,
    )
    assert line == "Validation 3 (epoch 3, iteration 270): accuracy 97.22, f1 0.9711 | loss 0.08312"


@pytest.mark.parametrize(
    ("metrics", "losses", "kwargs", "line"),
    [
        ({"acc": 0.5}, None, {}, "Validation: acc 0.5"),
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


def test_running_means() -> None:
    means = console.RunningMeans()
    means.update({"loss": torch.tensor(1.0, requires_grad=True) * 1, "aux": 2})
    means.update({"loss": torch.tensor([3.0])})
    means.update({"loss": torch.tensor(2.0), "late": torch.tensor(5.0)})
    assert means.means() == {"loss": 2.0, "aux": 2.0, "late": 5.0}
    assert len(means) == 3
    means.reset()
    assert means.means() == {} and len(means) == 0


def test_running_means_do_not_synchronise_per_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    means = console.RunningMeans()
    calls: list[str] = []
    for method in ("item", "tolist", "__float__"):
        original = getattr(torch.Tensor, method)

        def spy(self: torch.Tensor, *args: Any, _name: str = method, _orig: Any = original) -> Any:
            calls.append(_name)
            return _orig(self, *args)

        monkeypatch.setattr(torch.Tensor, method, spy)
    for step in range(10):
        means.update({"loss": torch.tensor(float(step)), "acc": torch.tensor(1.0)})
    assert calls == []  # updates never read a value back
    assert means.means() == {"loss": 4.5, "acc": 1.0}
    assert calls == ["tolist"]  # one transfer for every item


@pytest.mark.parametrize(
    ("items", "error", "match"),
    [
        ({"loss": torch.ones(3)}, ValueError, r"loss item 'loss' must be a scalar.*\(3,\)"),
        ({"loss": "low"}, TypeError, "loss item 'loss' must be a number .* got str"),
        ({"loss": None}, TypeError, "got NoneType"),
    ],
)
def test_running_means_refuse_bad_items(
    items: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        console.RunningMeans().update(items)
