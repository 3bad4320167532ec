"""Functions for training and evaluating networks, imported as ``pyblaze.nn.functional``.

Usually imported as ``import pyblaze.nn.functional as X``. The metrics take the predictions
and targets of a whole data set (see :py:mod:`pyblaze.nn.functional.metrics`).
"""

from . import metrics
from .metrics import *  # noqa: F403 - the package's names are the metrics module's

__all__ = metrics.__all__
