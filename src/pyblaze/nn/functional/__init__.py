"""Functions for training and evaluating networks, imported as ``pyblaze.nn.functional``.

Usually imported as ``import pyblaze.nn.functional as X``. The metrics take the predictions
and targets of a whole data set (see :py:mod:`pyblaze.nn.functional.metrics`).
"""

from .gumbel import gumbel_softmax
from .metrics import (
    accuracy,
    average_precision,
    f1_score,
    precision,
    recall,
    roc_auc_score,
)
from .random import generate_noise

__all__ = [
    "accuracy",
    "average_precision",
    "f1_score",
    "generate_noise",
    "gumbel_softmax",
    "precision",
    "recall",
    "roc_auc_score",
]
