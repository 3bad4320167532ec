"""What a run shows on the console: the validation summary line and the bar's running means.

Pure formatting functions; :py:mod:`helios.trainer.reporting` decides when they are used.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

import torch


def format_value(value: Any) -> str:
    """Format one metric value for the console.

    Integers (and booleans) are written as they are, real numbers with 4 significant digits
    (``0.08312``, ``97.22``, ``1.235e+04``), one-element tensors like the number they hold,
    anything else with ``str``.

    Args:
        value: the value.

    Returns:
        The text.
    """
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.detach().item()
    if isinstance(value, bool | numbers.Integral):
        return str(value)
    if isinstance(value, numbers.Real):
        number = float(value)
        if math.isnan(number) or math.isinf(number):
            return str(number)
        return f"{number:.4g}"
    return str(value)


def format_items(items: Mapping[str, Any], separator: str = ", ") -> str:
    """Return ``name value`` pairs joined by ``separator``, in the mapping's order.

    Args:
        items: the values by name.
        separator: what goes between two pairs.

    Returns:
        The text (empty for no items).
    """
    return separator.join(f"{name} {format_value(value)}" for name, value in items.items())


def format_validation_summary(
    metrics: Mapping[str, Any],
    loss_items: Mapping[str, Any] | None = None,
    *,
    cycle: int | None = None,
    epoch: int | None = None,
    iteration: int | None = None,
    batches: int | None = None,
    validated: bool = True,
) -> str:
    """Return the one line printed after a validation.

    Example: ``Validation 2 (epoch 3, iteration 270): metrics accuracy 97.22, f1 0.9711 |
    train loss 0.08312 (mean of 90 batches)``. The model's ``metrics`` table comes first,
    labelled ``metrics`` (whatever the model keeps there, validation results or not), then
    the running means of the training losses after a bar, with the number of batches they
    are over. ``cycle`` is the number the validation hooks get (counted from 0). Without
    validation data the line starts ``No validation data (epoch ...)``.

    Args:
        metrics: the model's ``metrics`` table.
        loss_items: the loss items (running means of ``_loss_items``), if any.
        cycle: the validation cycle (as the hooks number it), if known.
        epoch: the epoch, if known.
        iteration: the global iteration, if known.
        batches: the number of batches the loss means are over, if known.
        validated: whether a validation cycle ran.

    Returns:
        The line, without a newline.
    """
    if not validated:
        head = "No validation data"
    else:
        head = "Validation" if cycle is None else f"Validation {cycle}"
    where = [f"epoch {epoch}"] if epoch is not None else []
    if iteration is not None:
        where.append(f"iteration {iteration}")
    if where:
        head += f" ({', '.join(where)})"
    parts = []
    if metrics:
        parts.append(f"metrics {format_items(metrics)}")
    if loss_items:
        losses = format_items(loss_items)
        if batches is not None:
            losses += f" (mean of {batches} batch{'es' if batches != 1 else ''})"
        parts.append(losses)
    body = " | ".join(parts) if parts else "no metrics"
    return f"{head}: {body}"


def format_bar_postfix(means: Mapping[str, Any]) -> dict[str, str]:
    """Return the running means as a tqdm postfix (``bar.set_postfix(postfix, refresh=False)``).

    Args:
        means: the running means by loss item name.

    Returns:
        The formatted values by name, in the mapping's order.
    """
    return {name: format_value(value) for name, value in means.items()}


def format_progress_line(prefix: str, means: Mapping[str, Any]) -> str:
    """Return a whole progress line for output that is not a terminal.

    Args:
        prefix: what the bar would show on the left (e.g. ``"Epoch 2: 120/300"``).
        means: the running means by loss item name.

    Returns:
        ``"<prefix>, loss 0.4123, ..."`` (just the prefix without means).
    """
    items = format_items(means)
    return f"{prefix}, {items}" if items else prefix


__all__ = [
    "format_bar_postfix",
    "format_items",
    "format_progress_line",
    "format_validation_summary",
    "format_value",
]
