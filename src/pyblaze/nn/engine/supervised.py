"""PyBlaze 1.1.6 path ``pyblaze.nn.engine.supervised`` (thin module over :py:mod:`pyblaze.nn`)."""

from pyblaze.nn import SupervisedEngine

__all__ = ["SupervisedEngine"]
