"""The engine as the helpers of ``train`` see it: a Protocol.

:py:class:`pyblaze.nn.BaseEngine` satisfies it. The helpers (``_fit``, ``_epoch``,
``_helios_run``, ``_placement``, ``_sanity``, ``_metrics``) name the engine's type with it
instead of importing ``engines.py``, which imports them: the modules of pyblaze import one
way, and this one imports nothing else from pyblaze.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import torch
from torch import nn

from helios.core.precision import Precision


class Engine(Protocol):
    """What ``train`` and its helpers use of an engine."""

    model: nn.Module
    device: torch.device | None

    def train_batch(self, data: Any, **kwargs: Any) -> Any:
        """Train on one batch; return its loss."""

    def eval_batch(self, data: Any, **kwargs: Any) -> tuple[Any, Any]:
        """Return ``(prediction, target)`` of one batch."""

    def collate_predictions(self, predictions: list[Any]) -> Any:
        """Join the per-batch predictions."""

    def collate_targets(self, targets: list[Any]) -> Any:
        """Join the per-batch targets."""

    def collate_losses(self, losses: list[Any]) -> dict[str, list[Any]]:
        """Name the per-batch losses of an epoch."""

    def supports_multiple_gpus(self) -> bool:
        """Tell whether ``train`` may use several GPUs at once."""

    def evaluate(
        self,
        data: Iterable[Any],
        iterations: int | None = None,
        metrics: Any = None,
        callbacks: Sequence[Any] | None = None,
        gpu: Any = "auto",
        **kwargs: Any,
    ) -> Any:
        """Compute metrics of the model on a data set."""

    def start_run(
        self, precision: Precision, clip_norm: float | None, clip_value: float | None
    ) -> None:
        """Take the precision and clipping of a ``train`` call (in each of its processes)."""

    def end_run(self) -> None:
        """Forget the precision and clipping of the ``train`` call that ended."""


__all__ = ["Engine"]
