"""PyBlaze 1.1.6 path ``pyblaze.nn.callbacks.logging``: the progress loggers.

A thin module over :py:mod:`pyblaze.nn.callbacks`.
"""

from pyblaze.nn.callbacks import (
    BatchProgressLogger,
    EpochProgressLogger,
    PredictionProgressLogger,
)

__all__ = ["BatchProgressLogger", "EpochProgressLogger", "PredictionProgressLogger"]
