"""Functions for training and evaluating networks, imported as ``pyblaze.nn.functional``.

Usually imported as ``import pyblaze.nn.functional as X``. The metrics take the predictions
and targets of a whole data set (see :py:mod:`pyblaze.nn.functional.metrics`).
"""

from .metrics import (
    accuracy,
    average_precision,
    f1_score,
    precision,
    recall,
    roc_auc_score,
)

__all__ = [
    "accuracy",
    "average_precision",
    "f1_score",
    "precision",
    "recall",
    "roc_auc_score",
]
