"""What a run shows on the console: the validation summary line and the bar's running means.

Pure formatting functions plus :py:class:`RunningMeans`, which accumulates the model's
``_loss_items`` on their device (no host-device synchronisation per batch) and reads the
means once, when the progress bar refreshes.
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
) -> str:
    """Return the one line printed after a validation.

    Example: ``Validation 3 (epoch 3, iteration 270): accuracy 97.22, f1 0.9711 | loss
    0.08312``. The model's ``metrics`` table comes first, then the loss items after a bar.

    Args:
        metrics: the model's ``metrics`` table.
        loss_items: the loss items (running means of ``_loss_items``), if any.
        cycle: the validation cycle, if known.
        epoch: the epoch, if known.
        iteration: the global iteration, if known.

    Returns:
        The line, without a newline.
    """
    head = "Validation" if cycle is None else f"Validation {cycle}"
    where = [f"epoch {epoch}"] if epoch is not None else []
    if iteration is not None:
        where.append(f"iteration {iteration}")
    if where:
        head += f" ({', '.join(where)})"
    parts = [part for part in (format_items(metrics), format_items(loss_items or {})) if part]
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


class RunningMeans:
    """Running means of the loss items, summed where they live and read on demand.

    :py:meth:`update` adds each value, detached, to a sum on the value's device (an
    asynchronous operation: no host-device synchronisation); :py:meth:`means` reads every
    mean with a single transfer. Plain numbers are summed on the CPU. A name that appears in
    a later batch has its own count.
    """

    def __init__(self) -> None:
        self._sums: dict[str, torch.Tensor] = {}
        self._counts: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._sums)

    def update(self, items: Mapping[str, Any]) -> None:
        """Add one batch's loss items.

        Args:
            items: the values by name: one-element tensors or real numbers.

        Raises:
            TypeError: if a value is neither.
            ValueError: if a tensor has more than one element.
        """
        for name, value in items.items():
            if isinstance(value, torch.Tensor):
                if value.numel() != 1:
                    raise ValueError(
                        f"error: loss item {name!r} must be a scalar, got a tensor of shape "
                        f"{tuple(value.shape)}"
                    )
                tensor = value.detach().reshape(()).to(torch.float64)
            elif isinstance(value, numbers.Real) and not isinstance(value, bool):
                tensor = torch.tensor(float(value), dtype=torch.float64)
            else:
                raise TypeError(
                    f"error: loss item {name!r} must be a number or a one-element tensor, got "
                    f"{type(value).__name__}"
                )
            total = self._sums.get(name)
            if total is not None and total.device == tensor.device:
                self._sums[name] = total + tensor
            elif total is not None:
                self._sums[name] = total + tensor.to(total.device)
            else:
                self._sums[name] = tensor.clone()
            self._counts[name] = self._counts.get(name, 0) + 1

    def means(self) -> dict[str, float]:
        """Return the mean of each item since the last reset (one transfer per device).

        Returns:
            The means by name, in the order the names first appeared.
        """
        if not self._sums:
            return {}
        by_device: dict[torch.device, list[str]] = {}
        for name, total in self._sums.items():
            by_device.setdefault(total.device, []).append(name)
        values: dict[str, float] = {}
        for names in by_device.values():
            stacked = torch.stack([self._sums[n] for n in names]).tolist()
            values.update(zip(names, stacked))
        return {name: values[name] / self._counts[name] for name in self._sums}

    def reset(self) -> None:
        """Forget every sum (at the start of an epoch, say)."""
        self._sums.clear()
        self._counts.clear()


__all__ = [
    "RunningMeans",
    "format_bar_postfix",
    "format_items",
    "format_progress_line",
    "format_validation_summary",
    "format_value",
]
