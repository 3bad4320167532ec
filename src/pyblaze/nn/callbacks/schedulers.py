"""Callbacks that change the learning rate or another parameter while training runs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from pyblaze.nn.callbacks.base import TrainingCallback
from pyblaze.nn.history import Evaluation


class LearningRateScheduler(TrainingCallback):
    """Step a learning rate scheduler after every epoch (or every batch).

    Example:
        .. code-block:: python

            scheduler = optim.lr_scheduler.StepLR(optimizer, step_size=5)
            model.fit(..., optimizer=optimizer,
                      callbacks=[xnn.LearningRateScheduler(scheduler)])

            plateau = optim.lr_scheduler.ReduceLROnPlateau(optimizer)
            model.fit(..., callbacks=[xnn.LearningRateScheduler(plateau, metric="val_loss")])

    Args:
        scheduler: a scheduler of ``torch.optim.lr_scheduler`` (anything with ``step()``).
        after_batch: step after every batch instead of after every epoch.
        metric: pass this epoch metric to ``step`` (for ``ReduceLROnPlateau``); only with
            ``after_batch=False``.

    Raises:
        TypeError: if ``scheduler`` has no ``step`` method.
        ValueError: if ``metric`` is given together with ``after_batch=True``.
    """

    def __init__(
        self, scheduler: Any, after_batch: bool = False, metric: str | None = None
    ) -> None:
        if not callable(getattr(scheduler, "step", None)):
            raise TypeError(
                "LearningRateScheduler: scheduler must have a step() method, but received "
                f"{type(scheduler).__name__}"
            )
        if metric is not None and after_batch:
            raise ValueError(
                "LearningRateScheduler: metric is read from the epoch metrics, so it needs "
                "after_batch=False"
            )
        self.scheduler = scheduler
        self.exec_after_batch = after_batch
        self.metric = metric

    def after_batch(self, *args: Any) -> None:
        """Step the scheduler if it runs per batch."""
        if self.exec_after_batch:
            self.scheduler.step()

    def after_epoch(self, metrics: Evaluation) -> None:
        """Step the scheduler if it runs per epoch."""
        if self.exec_after_batch:
            return
        if self.metric is None:
            self.scheduler.step()
        else:
            self.scheduler.step(metrics[self.metric])

    def state_dict(self) -> dict[str, Any]:
        """Return the scheduler's state (part of the run's checkpoints).

        Returns:
            ``{"scheduler": scheduler.state_dict()}``, or an empty dict for a scheduler
            without ``state_dict``.
        """
        state_dict = getattr(self.scheduler, "state_dict", None)
        return {"scheduler": state_dict()} if callable(state_dict) else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :py:meth:`state_dict` returned.

        Args:
            state_dict: the state.
        """
        if "scheduler" in state_dict:
            self.scheduler.load_state_dict(state_dict["scheduler"])


class ParameterScheduler(TrainingCallback):
    """Update a scalar tensor in place after every epoch (or every batch).

    The new value is ``schedule(current_value, step)``, where ``step`` is the 0-based epoch
    index in epoch mode, or the 1-based number of batches seen in this run in batch mode.
    Keep the tensor where it is: it is updated in place, so the model sees the new value.

    Example:
        .. code-block:: python

            beta = torch.tensor(1.0)
            halve = xnn.ParameterScheduler(beta, lambda value, epoch: value / 2)

    Args:
        parameter: a tensor with one element.
        schedule: ``(value, step) -> new value``.
        after_batch: update after every batch instead of after every epoch.

    Raises:
        TypeError: if ``parameter`` is not a tensor or ``schedule`` is not callable.
        ValueError: if ``parameter`` has more than one element.
    """

    def __init__(
        self,
        parameter: torch.Tensor,
        schedule: Callable[[float, int], float],
        after_batch: bool = False,
    ) -> None:
        if not isinstance(parameter, torch.Tensor):
            raise TypeError(
                "ParameterScheduler: parameter must be a tensor, but received "
                f"{type(parameter).__name__}"
            )
        if parameter.numel() != 1:
            raise ValueError(
                "ParameterScheduler: parameter must have exactly one element, but has "
                f"shape {tuple(parameter.shape)}"
            )
        if not callable(schedule):
            raise TypeError("ParameterScheduler: schedule must be callable")
        self.parameter = parameter
        self.schedule = schedule
        self.exec_after_batch = after_batch
        self._epoch = 0
        self._batches = 0

    def before_training(self, model: nn.Module, num_epochs: int) -> None:
        """Reset the step counters."""
        self._epoch = 0
        self._batches = 0

    def before_epoch(self, current: int, num_iterations: int | None) -> None:
        """Remember the index of the epoch."""
        self._epoch = current

    def after_batch(self, *args: Any) -> None:
        """Update the parameter if it runs per batch."""
        if self.exec_after_batch:
            self._batches += 1
            self._update(self._batches)

    def after_epoch(self, metrics: Evaluation) -> None:
        """Update the parameter if it runs per epoch."""
        if not self.exec_after_batch:
            self._update(self._epoch)

    def state_dict(self) -> dict[str, Any]:
        """Return the step counters and the parameter's value (part of the checkpoints).

        Returns:
            The state.
        """
        return {"epoch": self._epoch, "batches": self._batches, "value": self.parameter.item()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :py:meth:`state_dict` returned (the parameter's value in place).

        Args:
            state_dict: the state.
        """
        self._epoch = int(state_dict["epoch"])
        self._batches = int(state_dict["batches"])
        with torch.no_grad():
            self.parameter.fill_(state_dict["value"])

    def _update(self, step: int) -> None:
        with torch.no_grad():
            self.parameter.fill_(self.schedule(self.parameter.item(), step))


__all__ = ["LearningRateScheduler", "ParameterScheduler"]
