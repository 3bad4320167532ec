"""Stop training once a metric has stopped improving."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from pyblaze.nn.callbacks.base import CallbackException, TrainingCallback
from pyblaze.nn.history import Evaluation


class EarlyStopping(TrainingCallback):
    """Stop training after ``patience`` epochs in a row without improvement of a metric.

    An epoch improves only if the metric is strictly better than the best value so far.
    After ``patience`` consecutive epochs without improvement, a verbose
    :py:class:`~pyblaze.nn.CallbackException` ends training ("Early stopping after epoch
    ..."); that last epoch is still recorded in the history. With values
    ``[1.0, 0.5, 0.7, 0.8]`` and ``patience=2``, training stops after epoch 4.

    Args:
        metric: the key of the epoch metrics to watch (``val_loss`` needs ``val_data`` and
            a ``loss`` passed to ``fit``), or a list of keys whose sum is watched.
        patience: the number of epochs without improvement that are tolerated.
        restore_best: if true, the weights of the best epoch are loaded back into the model
            when training ends (when the last epoch was not the best one).
        minimize: whether lower values are better.

    Raises:
        TypeError: if ``metric`` is not a string or a list of strings, or ``patience`` is
            not an int.
        ValueError: if ``patience`` < 1 or ``metric`` is an empty list.
    """

    def __init__(
        self,
        metric: str | Sequence[str] = "val_loss",
        patience: int = 5,
        restore_best: bool = False,
        minimize: bool = True,
    ) -> None:
        if isinstance(metric, str):
            self.metrics = [metric]
        elif isinstance(metric, Sequence) and all(isinstance(m, str) for m in metric):
            if not metric:
                raise ValueError("EarlyStopping: metric must name at least one metric")
            self.metrics = list(metric)
        else:
            raise TypeError(
                "EarlyStopping: metric must be a metric name or a list of names, but "
                f"received {metric!r}"
            )
        if isinstance(patience, bool) or not isinstance(patience, int):
            raise TypeError(
                f"EarlyStopping: patience must be an int >= 1, but received {patience!r}"
            )
        if patience < 1:
            raise ValueError(
                f"EarlyStopping: patience must be an int >= 1, but received {patience}"
            )
        self.metric = metric
        self.patience = patience
        self.restore_best = restore_best
        self.minimize = minimize
        self._reset()

    def _reset(self) -> None:
        self._model: nn.Module | None = None
        self.epoch = 0
        self.counter = 0
        self.best = math.inf if self.minimize else -math.inf
        self._best_state: dict[str, torch.Tensor] | None = None

    def before_training(self, model: nn.Module, num_epochs: int) -> None:
        """Reset the state (so the callback can be reused) and remember the model."""
        self._reset()
        self._model = model

    def after_epoch(self, metrics: Evaluation) -> None:
        """Compare the watched metric with the best value so far.

        Raises:
            KeyError: if a watched metric is not among the epoch's metrics.
            CallbackException: once ``patience`` epochs in a row did not improve.
        """
        self.epoch += 1
        value = self._watched_value(metrics)
        improved = value < self.best if self.minimize else value > self.best
        if improved:
            self.best = value
            self.counter = 0
            if self.restore_best and self._model is not None:
                self._best_state = {
                    k: v.detach().to("cpu", copy=True) for k, v in self._model.state_dict().items()
                }
            return
        self.counter += 1
        if self.counter >= self.patience:
            raise CallbackException(
                f"Early stopping after epoch {self.epoch} (patience {self.patience}).",
                verbose=True,
            )

    def state_dict(self) -> dict[str, Any]:
        """Return what a resumed ``fit`` needs: epochs seen, the counter, the best value.

        It is part of the run's checkpoints (``fit(trainer_options={"chkpt_root": ...})``),
        so a resumed run stops at the same epoch as an uninterrupted one.

        Returns:
            The state (with the best weights when ``restore_best`` kept them).
        """
        return {
            "epoch": self.epoch,
            "counter": self.counter,
            "best": self.best,
            "best_state": self._best_state,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :py:meth:`state_dict` returned.

        Args:
            state_dict: the state.
        """
        self.epoch = int(state_dict["epoch"])
        self.counter = int(state_dict["counter"])
        self.best = float(state_dict["best"])
        self._best_state = state_dict["best_state"]

    def _watched_value(self, metrics: Evaluation) -> float:
        missing = [m for m in self.metrics if m not in metrics]
        if missing:
            hint = ""
            if any(m.startswith("val_") for m in missing):
                hint = " Validation metrics need val_data (and val_loss needs loss=) in fit."
            raise KeyError(
                f"EarlyStopping watches metric {missing[0]!r}, which is not among the "
                f"epoch's metrics {metrics.keys}.{hint}"
            )
        return float(sum(float(metrics[m]) for m in self.metrics))

    def after_training(self) -> None:
        """Load the best weights back if ``restore_best`` and the last epoch was not best."""
        if self.restore_best and self.counter > 0 and self._best_state is not None:
            assert self._model is not None
            self._model.load_state_dict(self._best_state)
        self._best_state = None
        self._model = None


__all__ = ["EarlyStopping"]
