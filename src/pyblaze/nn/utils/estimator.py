"""PyBlaze 1.1.6 path ``pyblaze.nn.utils.estimator`` (thin module over :py:mod:`pyblaze.nn`)."""

from pyblaze.nn import Estimator

__all__ = ["Estimator"]
