"""Callbacks of :py:meth:`~pyblaze.nn.Estimator.fit`, ``evaluate`` and ``predict``."""

from .base import CallbackException, PredictionCallback, TrainingCallback
from .early_stopping import EarlyStopping
from .progress import BatchProgressLogger, EpochProgressLogger, PredictionProgressLogger
from .saver import ModelSaverCallback
from .schedulers import LearningRateScheduler, ParameterScheduler
from .tracking import TensorboardTracker

__all__ = [
    "BatchProgressLogger",
    "CallbackException",
    "EarlyStopping",
    "EpochProgressLogger",
    "LearningRateScheduler",
    "ModelSaverCallback",
    "ParameterScheduler",
    "PredictionCallback",
    "PredictionProgressLogger",
    "TensorboardTracker",
    "TrainingCallback",
]
