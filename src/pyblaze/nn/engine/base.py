"""PyBlaze 1.1.6 path ``pyblaze.nn.engine.base`` (thin module over :py:mod:`pyblaze.nn`)."""

from pyblaze.nn import BaseEngine

__all__ = ["BaseEngine"]
