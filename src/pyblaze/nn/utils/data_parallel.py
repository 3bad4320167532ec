"""PyBlaze 1.1.6 path ``pyblaze.nn.utils.data_parallel`` (thin module over :py:mod:`pyblaze.nn`)."""

from pyblaze.nn import DataParallel

__all__ = ["DataParallel"]
