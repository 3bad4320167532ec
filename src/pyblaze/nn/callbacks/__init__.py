"""Callbacks of :py:meth:`~pyblaze.nn.Estimator.fit`, ``evaluate`` and ``predict``."""

from typing import TYPE_CHECKING, Any

from .base import CallbackException, PredictionCallback, TrainingCallback
from .early_stopping import EarlyStopping
from .progress import BatchProgressLogger, EpochProgressLogger, PredictionProgressLogger
from .saver import ModelSaverCallback
from .schedulers import LearningRateScheduler, ParameterScheduler
from .tracking import TensorboardTracker

if TYPE_CHECKING:
    from .neptune import NeptuneTracker
    from .parallel import ModelSharingCallback, SynchronizationCallback

# These modules subclass the classes above through this package, so they are loaded on
# first use, once the package is complete (whatever the order of the imports above).
_LAZY = {
    "ModelSharingCallback": "parallel",
    "NeptuneTracker": "neptune",
    "SynchronizationCallback": "parallel",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BatchProgressLogger",
    "CallbackException",
    "EarlyStopping",
    "EpochProgressLogger",
    "LearningRateScheduler",
    "ModelSaverCallback",
    "ModelSharingCallback",
    "NeptuneTracker",
    "ParameterScheduler",
    "PredictionCallback",
    "PredictionProgressLogger",
    "SynchronizationCallback",
    "TensorboardTracker",
    "TrainingCallback",
]
