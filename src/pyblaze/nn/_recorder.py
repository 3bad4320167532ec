"""The history of a training run, recorded epoch by epoch."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pyblaze.nn.history import Evaluation


class HistoryRecorder:
    """Collects the losses and metrics of each epoch into history entries.

    Args:
        collate_losses: names the per-batch losses of an epoch (the engine's
            ``collate_losses``).

    Attributes:
        losses: the batch losses of the current epoch (the epoch appends to it).
        sizes: the batch sizes of the current epoch.
        entries: one entry per finished epoch: ``micro_train_loss`` (the batch losses) and
            the epoch's averaged losses and metrics.
    """

    def __init__(self, collate_losses: Callable[[list[Any]], Mapping[str, Any]]) -> None:
        self._collate_losses = collate_losses
        self.entries: list[dict[str, Any]] = []
        self.start_epoch()

    def start_epoch(self) -> None:
        """Forget the batches and metrics of the previous epoch."""
        self.losses: list[Any] = []
        self.sizes: list[int] = []
        self._metrics: dict[str, Any] = {}

    def add_metrics(self, values: Mapping[str, Any], prefix: str) -> None:
        """Record metrics of the epoch.

        Args:
            values: the metric values.
            prefix: put in front of every name (``"val_"``, ``"train_"``).
        """
        self._metrics.update({f"{prefix}{k}": v for k, v in values.items()})

    def end_epoch(self) -> Evaluation:
        """Close the epoch: append its history entry.

        Returns:
            The epoch's losses (averaged, weighted by batch size) and metrics.
        """
        losses = Evaluation(self._collate_losses(self.losses), weights=self.sizes)
        metrics = Evaluation.merge(losses, Evaluation(self._metrics))
        self.entries.append({"micro_train_loss": list(self.losses), **metrics.to_dict()})
        return metrics


__all__ = ["HistoryRecorder"]
