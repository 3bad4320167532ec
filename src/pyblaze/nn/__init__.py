"""PyBlaze's training API on the helios engine, imported as ``import pyblaze.nn as xnn``.

* :py:class:`Estimator`: ``fit``/``evaluate``/``predict`` on a module, through its engine.
* Engines: :py:class:`BaseEngine` (for your own) and :py:class:`SupervisedEngine`.
* Results: :py:class:`History` and :py:class:`Evaluation`.
* Callbacks: :py:class:`EarlyStopping`, the progress loggers, :py:class:`ModelSaverCallback`,
  :py:class:`LearningRateScheduler`, :py:class:`ParameterScheduler`,
  :py:class:`TensorboardTracker`, and the bases :py:class:`TrainingCallback` and
  :py:class:`PredictionCallback`.
* :py:class:`Config` and :py:class:`Configurable`: save a model's architecture with its
  weights.

Importing this package adds ``loader`` and ``random_split`` to
:py:class:`torch.utils.data.Dataset` (see :py:mod:`pyblaze.nn.data`); this is its one side
effect, and the API of the PyBlaze tutorial.

``fit`` runs on :py:class:`helios.trainer.Trainer`: helios plug-ins can be passed with
``fit(..., plugins=[...])`` and further Trainer arguments with
``fit(..., trainer_options={...})`` (see :py:meth:`BaseEngine.train`).
"""

from .callbacks import (
    BatchProgressLogger,
    CallbackException,
    EarlyStopping,
    EpochProgressLogger,
    LearningRateScheduler,
    ModelSaverCallback,
    ModelSharingCallback,
    NeptuneTracker,
    ParameterScheduler,
    PredictionCallback,
    PredictionProgressLogger,
    SynchronizationCallback,
    TensorboardTracker,
    TrainingCallback,
)
from .config import Config, Configurable
from .data import NoiseDataset, install_dataset_extensions
from .data_parallel import DataParallel
from .engines import BaseEngine, SupervisedEngine
from .estimator import Estimator
from .history import Evaluation, History
from .modules import StackedLSTM, StackedLSTMCell, WeightedBCELoss

install_dataset_extensions()

__all__ = [
    "BaseEngine",
    "BatchProgressLogger",
    "CallbackException",
    "Config",
    "Configurable",
    "DataParallel",
    "EarlyStopping",
    "EpochProgressLogger",
    "Estimator",
    "Evaluation",
    "History",
    "LearningRateScheduler",
    "ModelSaverCallback",
    "ModelSharingCallback",
    "NeptuneTracker",
    "NoiseDataset",
    "ParameterScheduler",
    "PredictionCallback",
    "PredictionProgressLogger",
    "StackedLSTM",
    "StackedLSTMCell",
    "SupervisedEngine",
    "SynchronizationCallback",
    "TensorboardTracker",
    "TrainingCallback",
    "WeightedBCELoss",
]
