"""Callbacks that print the progress of training, evaluation and prediction.

The output matches PyBlaze's: :py:class:`BatchProgressLogger` prints, for every epoch::

    Epoch 1/20:
      [Elapsed 0:00:10] train_loss: 2.05092, val_accuracy: 0.31800, val_loss: 1.88532

with a live bar in between when the output is a terminal.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any, ClassVar, TextIO

from torch import nn

from pyblaze.nn.callbacks.base import PredictionCallback, TrainingCallback
from pyblaze.nn.history import Evaluation
from pyblaze.utils.progress import ProgressBar

FileArg = str | os.PathLike[str] | TextIO | None


class _Output:
    """The destination of a logger: stdout, an open stream, or a file opened per run."""

    def __init__(self, file: FileArg) -> None:
        if (
            file is not None
            and not isinstance(file, str | os.PathLike)
            and not hasattr(file, "write")
        ):
            raise TypeError(
                "file must be None (stdout), a path or a writable stream, but received "
                f"{file!r} of type {type(file).__name__}"
            )
        self._file = file
        self._opened: TextIO | None = None

    def open(self) -> TextIO | None:
        """Open the destination; return the stream (``None`` means stdout)."""
        self.close()
        if isinstance(self._file, str | os.PathLike):
            path = pathlib.Path(self._file)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._opened = path.open("a", encoding="utf-8")
            return self._opened
        return self._file

    def close(self) -> None:
        """Close a file opened by :py:meth:`open`."""
        if self._opened is not None:
            self._opened.close()
            self._opened = None

    def __getstate__(self) -> dict[str, Any]:
        if self._file is not None and not isinstance(self._file, str | os.PathLike):
            raise TypeError(
                "a progress logger writing to an open stream cannot be sent to another "
                "process; pass a file path instead"
            )
        return {"_file": self._file, "_opened": None}


class _BarLogger:
    """A logger that shows one bar at a time on its output, opened per bar.

    The hooks of a subclass start, advance and finish the bar; ``file`` is where to
    print, as for :py:class:`BatchProgressLogger`.
    """

    rank_zero_only: ClassVar[bool] = True

    def __init__(self, file: FileArg = None) -> None:
        self._output = _Output(file)
        self._bar: ProgressBar | None = None

    def _begin(self, total: int | None) -> None:
        self._bar = ProgressBar(total, file=self._output.open())
        self._bar.start()

    def _advance(self) -> None:
        if self._bar is not None:
            self._bar.step()

    def _end(self) -> None:
        bar, self._bar = self._bar, None
        if bar is not None:
            bar.finish()
        self._output.close()


class EpochProgressLogger(_BarLogger, TrainingCallback):
    """Show one bar over all epochs of a training run (``file``: as for the batch logger)."""

    def before_training(self, model: nn.Module, num_epochs: int) -> None:
        """Start the bar over ``num_epochs`` epochs."""
        self._begin(num_epochs)

    def after_epoch(self, metrics: Evaluation) -> None:
        """Advance the bar by one epoch."""
        self._advance()

    def after_training(self) -> None:
        """Print the summary line (elapsed time)."""
        self._end()


class BatchProgressLogger(TrainingCallback):
    """Print ``Epoch i/n:`` and a bar over the batches of every epoch, then its metrics.

    Args:
        file: where to print: ``None`` for stdout, a path (appended to; folders are
            created) or a writable stream.
    """

    rank_zero_only: ClassVar[bool] = True

    def __init__(self, file: FileArg = None) -> None:
        self._output = _Output(file)
        self._stream: TextIO | None = None
        self._num_epochs = 0
        self._bar: ProgressBar | None = None

    def before_training(self, model: nn.Module, num_epochs: int) -> None:
        """Remember the number of epochs and open the output."""
        self._num_epochs = num_epochs
        self._stream = self._output.open()

    def before_epoch(self, current: int, num_iterations: int | None) -> None:
        """Print the epoch header and start the batch bar (no total for a stream)."""
        self._bar = ProgressBar(num_iterations, file=self._stream, indent=2)
        self._bar.stream.write(f"Epoch {current + 1}/{self._num_epochs}:\n")
        self._bar.start()

    def after_batch(self, *args: Any) -> None:
        """Advance the bar by one batch."""
        if self._bar is not None:
            self._bar.step()

    def after_epoch(self, metrics: Evaluation) -> None:
        """Print the elapsed time and the metrics of the epoch."""
        if self._bar is not None:
            self._bar.finish(metrics.to_dict())
            self._bar = None

    def after_training(self) -> None:
        """Close the output."""
        self._bar = None
        self._stream = None
        self._output.close()


class PredictionProgressLogger(_BarLogger, PredictionCallback):
    """Show a bar over the batches of an evaluation or prediction.

    ``file`` is where to print, as for every progress logger: ``None`` for stdout, a path
    (appended to; folders are created) or a writable stream.
    """

    def before_predictions(self, model: nn.Module, num_iterations: int | None) -> None:
        """Start the bar over ``num_iterations`` batches (``None``: a stream)."""
        self._begin(num_iterations)

    def after_batch(self, *args: Any) -> None:
        """Advance the bar by one batch."""
        self._advance()

    def after_predictions(self) -> None:
        """Print the summary line (elapsed time)."""
        self._end()


__all__ = ["BatchProgressLogger", "EpochProgressLogger", "PredictionProgressLogger"]
