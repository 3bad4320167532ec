"""Network modules of PyBlaze 1.1.6 (also exported by :py:mod:`pyblaze.nn`).

:py:class:`WeightedBCELoss`, :py:class:`StackedLSTM` and :py:class:`StackedLSTMCell`.
"""

from .loss import WeightedBCELoss
from .lstm import StackedLSTM, StackedLSTMCell

__all__ = ["StackedLSTM", "StackedLSTMCell", "WeightedBCELoss"]
