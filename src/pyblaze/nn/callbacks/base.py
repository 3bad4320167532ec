"""The callback protocol of ``train``, ``evaluate`` and ``predict``.

The hooks are called by :py:meth:`~pyblaze.nn.BaseEngine.train`,
:py:meth:`~pyblaze.nn.BaseEngine.evaluate` and :py:meth:`~pyblaze.nn.BaseEngine.predict`.

Order of the hooks in ``train`` (the engine itself is always the first callback, then the
user's callbacks in list order)::

    before_training(model, num_epochs)
    for each epoch:
        before_epoch(current, num_iterations)
        after_batch(train_loss)                 # after every training batch
        before_predictions(model, n)            # validation, PredictionCallbacks only
        after_batch(None)                       # after every validation batch
        after_predictions()
        after_epoch(metrics)                    # an Evaluation: train_loss, val_*, ...
    after_training()

A :py:class:`CallbackException` raised by ``before_epoch`` or ``after_epoch`` stops
training: the remaining callbacks still get that hook, the epoch is recorded (when raised
by ``after_epoch``), then ``after_training`` runs and the exception's message is printed if
it is verbose. Any other exception propagates out of ``fit``.

Callbacks are reusable: ``before_training`` and ``before_predictions`` reset their state, so
one instance can be passed to several ``fit``/``evaluate`` calls.
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn

from pyblaze.nn.history import Evaluation


class CallbackException(Exception):  # noqa: N818 - PyBlaze's public name
    """Raised by a callback to stop training (see the module docstring).

    Args:
        message: the reason.
        verbose: if true, the message is printed once training has ended.
    """

    def __init__(self, message: str, verbose: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.verbose = verbose

    def print(self) -> None:
        """Print the message if the exception is verbose."""
        if self.verbose:
            print(self.message)


class TrainingCallback:
    """Base class of callbacks that follow training; every hook does nothing by default.

    Attributes:
        rank_zero_only: when true, the callback runs only in the process of rank 0 of a
            distributed (multi-GPU) run. Set it for callbacks with outside effects (printing,
            writing files); leave it false for callbacks that change the training
            (schedulers, early stopping), which must run in every process.
    """

    rank_zero_only: ClassVar[bool] = False

    def before_training(self, model: nn.Module, num_epochs: int) -> None:
        """Run once before the first epoch.

        Args:
            model: the trained model (never a distributed wrapper).
            num_epochs: the number of epochs requested.
        """

    def before_epoch(self, current: int, num_iterations: int | None) -> None:
        """Run before each epoch; may raise :py:class:`CallbackException` to stop.

        Args:
            current: the index of the epoch, from 0.
            num_iterations: the number of training batches of the epoch (``None`` for
                training data without a length: a stream).
        """

    def after_batch(self, *args: Any) -> None:
        """Run after each training batch with its loss (a float, for the default engines).

        Args:
            *args: the loss returned by the engine's ``train_batch``.
        """

    def after_epoch(self, metrics: Evaluation) -> None:
        """Run after each epoch; may raise :py:class:`CallbackException` to stop.

        Args:
            metrics: ``train_loss`` and the validation metrics (``val_loss``,
                ``val_<metric>``) of the epoch.
        """

    def after_training(self) -> None:
        """Run once after the last epoch, also when training was stopped."""


class PredictionCallback:
    """Base class of callbacks that follow evaluation and prediction.

    They also follow the validation of every epoch during training.

    Attributes:
        rank_zero_only: see :py:class:`TrainingCallback`.
    """

    rank_zero_only: ClassVar[bool] = False

    def before_predictions(self, model: nn.Module, num_iterations: int | None) -> None:
        """Run before the first batch.

        Args:
            model: the model making the predictions.
            num_iterations: the number of batches (``None`` for data without a length and
                no ``iterations``: a stream, read to its end).
        """

    def after_batch(self, *args: Any) -> None:
        """Run after each batch (with ``None`` as its only argument).

        Args:
            *args: ``None``.
        """

    def after_predictions(self) -> None:
        """Run after the last batch."""


__all__ = ["CallbackException", "PredictionCallback", "TrainingCallback"]
