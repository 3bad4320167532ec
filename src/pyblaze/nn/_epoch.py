"""One epoch of a pyblaze training run: the engine's batches, their records and hooks."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from pyblaze.nn._callback_list import CallbackList
from pyblaze.nn._metrics import Metric, score_outputs
from pyblaze.nn._recorder import HistoryRecorder
from pyblaze.nn._tensors import batch_size, to_device
from pyblaze.nn.callbacks.base import PredictionCallback, TrainingCallback
from pyblaze.nn.history import Evaluation

if TYPE_CHECKING:
    from pyblaze.nn._protocols import Engine


@dataclasses.dataclass
class TrainSpec:
    """What a ``train`` call asks of its epochs (its arguments, checked).

    Attributes:
        epochs: the number of epochs requested.
        callbacks: the user's callbacks.
        train_kwargs: the arguments of ``train_batch``.
        eval_kwargs: the arguments of ``eval_batch``.
        val_metrics: the metrics computed on the validation data (``loss`` included).
        train_metrics: the metrics computed on the training data (``None``: none).
        train_data: the training loader (for ``train_metrics``).
        val_data: the validation loader (for the check before training), if any.
        clip_norm: clip the gradients to this total norm before each optimizer step.
        clip_value: clip every gradient element to ``[-clip_value, clip_value]``.
    """

    epochs: int
    callbacks: list[TrainingCallback | PredictionCallback]
    train_kwargs: dict[str, Any]
    eval_kwargs: dict[str, Any]
    val_metrics: dict[str, Metric]
    train_metrics: dict[str, Metric] | None
    train_data: DataLoader
    val_data: DataLoader | None = None
    clip_norm: float | None = None
    clip_value: float | None = None


@dataclasses.dataclass
class RunCallbacks:
    """The callbacks of one process of a run, the engine first in both lists.

    Attributes:
        training: the training callbacks.
        prediction: the prediction callbacks (they follow validation).
    """

    training: CallbackList
    prediction: CallbackList


class Epoch:
    """An epoch that does nothing: the one a ``CallbackException`` in ``before_epoch`` skips.

    :py:class:`EpochRun`, the epoch that trains, has the same methods.
    """

    loss: Any = None

    def train(self, batch: Any) -> Any:
        """Train on a batch (here: nothing).

        Args:
            batch: the batch.

        Returns:
            The batch's loss (here ``None``).
        """
        return None

    def end_batch(self, loss: Any) -> None:
        """Record the last batch and call ``after_batch`` (here: nothing).

        Args:
            loss: the batch's loss (averaged over ranks in a distributed run).
        """

    def start_validation(self) -> None:
        """Call ``before_predictions`` for the validation (here: nothing)."""

    def validate(self, batch: Any) -> None:
        """Evaluate a validation batch (here: nothing).

        Args:
            batch: the batch.
        """

    def end_validation(self) -> None:
        """Compute the validation metrics; call ``after_predictions`` (here: nothing)."""

    def conclude(self) -> Evaluation | None:
        """Compute the epoch's metrics and append its history entry (once).

        Returns:
            The epoch's metrics; ``None`` for a skipped epoch.
        """
        return None

    def finish(self) -> Evaluation | None:
        """Close the epoch.

        Returns:
            The epoch's metrics for ``after_epoch``; ``None`` for a skipped epoch.
        """
        return self.conclude()


class EpochRun(Epoch):
    """An epoch that trains and validates the engine, records its results and calls hooks.

    Args:
        engine: the engine.
        module: the trained model (never a distributed wrapper), for the callbacks.
        spec: the arguments of the ``train`` call.
        device: the device of this process.
        callbacks: the callbacks of this process.
        recorder: the run's history (the epoch's records start now).
        num_val_batches: the number of validation batches (for ``before_predictions``).
    """

    def __init__(
        self,
        engine: Engine,
        module: nn.Module,
        spec: TrainSpec,
        device: torch.device,
        callbacks: RunCallbacks,
        recorder: HistoryRecorder,
        num_val_batches: int | None,
    ) -> None:
        self._engine = engine
        self._spec = spec
        self._device = device
        self._callbacks = callbacks
        self._recorder = recorder
        self._num_val_batches = num_val_batches
        self._module = module
        recorder.start_epoch()
        # Bound once: the per-batch path looks up nothing else.
        self._train_batch = engine.train_batch
        self._train_kwargs = spec.train_kwargs
        self._after_train_batch = callbacks.training.batch_hook
        self._losses, self._sizes = recorder.losses, recorder.sizes
        self._size = 0
        self._outputs: list[Any] = []
        self._metrics: Evaluation | None = None

    def train(self, batch: Any) -> Any:
        """Move a batch to the device and train on it with the engine.

        Args:
            batch: the batch.

        Returns:
            The loss ``train_batch`` returned.
        """
        batch = to_device(batch, self._device)
        self.loss = self._train_batch(batch, **self._train_kwargs)
        self._size = batch_size(batch)
        return self.loss

    def end_batch(self, loss: Any) -> None:
        """Record the last batch's loss and size; call ``after_batch(loss)``.

        Args:
            loss: the batch's loss (averaged over ranks in a distributed run).
        """
        self._losses.append(loss)
        self._sizes.append(self._size)
        self._after_train_batch(loss)

    def start_validation(self) -> None:
        """Call ``before_predictions`` on the prediction callbacks."""
        self._outputs = []
        self._callbacks.prediction.call("before_predictions", self._module, self._num_val_batches)

    def validate(self, batch: Any) -> None:
        """Evaluate a validation batch; keep its outputs on the CPU; call ``after_batch``.

        Args:
            batch: the batch.
        """
        output = self._engine.eval_batch(to_device(batch, self._device), **self._spec.eval_kwargs)
        self._outputs.append(to_device(output, "cpu"))
        self._callbacks.prediction.batch_hook(None)

    def end_validation(self) -> None:
        """Compute the validation metrics on the whole set; call ``after_predictions``."""
        outputs, self._outputs = self._outputs, []
        self._recorder.add_metrics(
            score_outputs(self._engine, outputs, self._spec.val_metrics), "val_"
        )
        self._callbacks.prediction.call("after_predictions")

    def conclude(self) -> Evaluation:
        """Compute the training metrics (``eval_train``) and append the history entry.

        Called at the end of the epoch's validation (so that the metrics reach the helios
        model's ``metrics`` table before helios reports them); later calls return the same.

        Returns:
            The epoch's losses and metrics, for ``after_epoch``.
        """
        if self._metrics is not None:
            return self._metrics
        spec = self._spec
        if spec.train_metrics is not None:
            users = [c for c in self._callbacks.prediction if c is not self._engine]
            train_eval = self._engine.evaluate(
                spec.train_data,
                metrics=spec.train_metrics,
                callbacks=users,
                gpu=None,
                **spec.eval_kwargs,
            )
            self._recorder.add_metrics(train_eval.with_prefix("train_").to_dict(), "")
        self._metrics = self._recorder.end_epoch()
        return self._metrics


__all__ = ["Epoch", "EpochRun", "RunCallbacks", "TrainSpec"]
