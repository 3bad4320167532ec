"""Send the training progress to Neptune (PyBlaze 1.1.6 ``NeptuneTracker``)."""

from __future__ import annotations

from typing import Any, ClassVar

from pyblaze.nn.callbacks.base import TrainingCallback
from pyblaze.nn.callbacks.tracking import batch_loss_scalars


class NeptuneTracker(TrainingCallback):
    """Log the batch losses and the epoch metrics to a Neptune experiment or run.

    Every batch loss is logged as ``batch_train_loss`` (``batch_train_loss_<i>`` or
    ``_<key>`` for tuple or dict losses); every epoch metric (``train_loss``, ``val_loss``,
    ...) under its name. Neptune is not imported here: pass

    * a run of the current client, ``neptune.init_run(...)`` (``pip install
      "helios-blaze[neptune]"``): values are appended to ``run[name]``; or
    * any object with ``log_metric(name, value)``, such as the experiments of the legacy
      ``neptune-client`` that PyBlaze 1.1.6 was written for.

    Args:
        experiment: the Neptune run or experiment.

    Raises:
        TypeError: if ``experiment`` has neither ``log_metric`` nor item access.
    """

    rank_zero_only: ClassVar[bool] = True

    def __init__(self, experiment: Any) -> None:
        kind = type(experiment)
        # Look on the type: a neptune Run raises a non-AttributeError for unknown names.
        if callable(getattr(kind, "log_metric", None)):
            self._legacy = True
        elif hasattr(kind, "__getitem__"):
            self._legacy = False
        else:
            raise TypeError(
                "experiment must be a neptune run (neptune.init_run()) or have a "
                f"log_metric(name, value) method, got {kind.__name__}"
            )
        self.experiment = experiment

    def _log(self, name: str, value: float) -> None:
        if self._legacy:
            self.experiment.log_metric(name, value)
        else:
            self.experiment[name].append(value)

    def after_batch(self, *args: Any) -> None:
        """Log the batch loss."""
        if not args or args[0] is None:
            return
        for name, value in batch_loss_scalars(args[0]).items():
            self._log(name, value)

    def after_epoch(self, metrics: Any) -> None:
        """Log the epoch metrics."""
        values = metrics.to_dict() if hasattr(metrics, "to_dict") else dict(metrics)
        for name, value in values.items():
            if isinstance(value, int | float) or hasattr(value, "__float__"):
                self._log(name, float(value))


__all__ = ["NeptuneTracker"]
