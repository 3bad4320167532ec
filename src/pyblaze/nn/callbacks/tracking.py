"""Callbacks that send the training progress to experiment trackers."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from torch import nn

from pyblaze.nn.callbacks.base import TrainingCallback
from pyblaze.nn.history import Evaluation

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter


def batch_loss_scalars(loss: Any) -> dict[str, float]:
    """Name the values of a batch loss as the trackers log them.

    Args:
        loss: what ``train_batch`` returned: a number, or a tuple, list or dict of them.

    Returns:
        ``{"batch_train_loss": loss}``, or one ``batch_train_loss_<index or key>`` each.
    """
    if isinstance(loss, tuple | list):
        return {f"batch_train_loss_{i}": float(v) for i, v in enumerate(loss)}
    if isinstance(loss, Mapping):
        return {f"batch_train_loss_{k}": float(v) for k, v in loss.items()}
    return {"batch_train_loss": float(loss)}


class TensorboardTracker(TrainingCallback):
    """Write the batch losses and the epoch metrics to TensorBoard.

    Every batch loss is written as ``batch_train_loss`` (``batch_train_loss_<i>`` or
    ``_<key>`` for tuple or dict losses) with the batch count as step; every epoch metric
    (``train_loss``, ``val_loss``, ...) with the epoch count as step. Both counts restart at
    0 in ``before_training``. The writer is created on first use, in the folder given.

    Args:
        local_dir: the run folder of the event files.

    Raises:
        ImportError: if TensorBoard is not installed.
    """

    rank_zero_only: ClassVar[bool] = True

    def __init__(self, local_dir: str | os.PathLike[str]) -> None:
        try:
            import torch.utils.tensorboard  # noqa: F401
        except ImportError as e:
            raise ImportError(
                "TensorboardTracker needs TensorBoard: pip install tensorboard"
            ) from e
        self.local_dir = os.fspath(local_dir)
        self._writer: SummaryWriter | None = None
        self._batch = 0
        self._epoch = 0

    @property
    def writer(self) -> SummaryWriter:
        """The TensorBoard ``SummaryWriter`` (created on first access)."""
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(self.local_dir)
        return self._writer

    def before_training(self, model: nn.Module, num_epochs: int) -> None:
        """Reset the step counters."""
        self._batch = 0
        self._epoch = 0

    def after_batch(self, *args: Any) -> None:
        """Write the batch loss."""
        if not args or args[0] is None:
            return
        for name, value in batch_loss_scalars(args[0]).items():
            self.writer.add_scalar(name, value, self._batch)
        self._batch += 1

    def after_epoch(self, metrics: Evaluation) -> None:
        """Write the epoch metrics."""
        for name, value in metrics.to_dict().items():
            if isinstance(value, int | float):
                self.writer.add_scalar(name, value, self._epoch)
        self._epoch += 1

    def after_training(self) -> None:
        """Flush the event file."""
        if self._writer is not None:
            self._writer.flush()

    def state_dict(self) -> dict[str, Any]:
        """Return the step counters, ``{"batch", "epoch"}`` (part of the run's checkpoints)."""
        return {"batch": self._batch, "epoch": self._epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue counting from the steps :py:meth:`state_dict` returned."""
        self._batch = int(state_dict["batch"])
        self._epoch = int(state_dict["epoch"])

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_writer"] = None
        return state


__all__ = ["TensorboardTracker"]
