"""PyBlaze 1.1.6 path ``pyblaze.nn.utils.config`` (thin module over :py:mod:`pyblaze.nn`)."""

from pyblaze.nn import Config, Configurable

__all__ = ["Config", "Configurable"]
