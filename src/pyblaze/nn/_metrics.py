"""Metrics of the engines: each computed once on the outputs of a whole data set."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from pyblaze.nn._protocols import Engine

Metric = Callable[[Any, Any], Any]


def compute_metrics(
    metrics: Mapping[str, Metric], predictions: Any, targets: Any
) -> dict[str, Any]:
    """Call every metric once on the predictions and targets of the whole data set.

    Args:
        metrics: ``{name: metric(predictions, targets)}``.
        predictions: the collated predictions.
        targets: the collated targets.

    Returns:
        ``{name: value}``; a metric that returns a dict ``{key: value}`` gives the entries
        ``name_key``. Values are Python numbers.

    Raises:
        TypeError: if a metric returns ``None``.
        ValueError: if a metric returns a tensor with more than one element.
    """
    values: dict[str, Any] = {}
    for name, metric in metrics.items():
        result = metric(predictions, targets)
        if result is None:
            raise TypeError(
                f"metric {name!r} ({metric!r}) returned None; a metric must return a number "
                "(a float or a one-element tensor) or a dict of numbers. Did it forget a "
                "return statement?"
            )
        items = (
            {f"{name}_{k}": v for k, v in result.items()}
            if isinstance(result, Mapping)
            else {name: result}
        )
        for key, value in items.items():
            if isinstance(value, torch.Tensor):
                if value.numel() != 1:
                    raise ValueError(
                        f"metric {key!r} must return a single number, but returned a tensor "
                        f"of shape {tuple(value.shape)}"
                    )
                value = value.item()
            values[key] = value
    return values


def score_outputs(
    engine: Engine, outputs: Sequence[Any], metrics: Mapping[str, Metric]
) -> dict[str, Any]:
    """Join the ``(prediction, target)`` pairs of a data set's batches and compute metrics.

    Args:
        engine: the engine, whose ``collate_predictions`` and ``collate_targets`` join them.
        outputs: the ``eval_batch`` results, one per batch.
        metrics: ``{name: metric(predictions, targets)}``.

    Returns:
        The values, as :py:func:`compute_metrics` returns them.
    """
    predictions = engine.collate_predictions([output[0] for output in outputs])
    targets = engine.collate_targets([output[1] for output in outputs])
    return compute_metrics(metrics, predictions, targets)


__all__ = ["Metric", "compute_metrics", "score_outputs"]
