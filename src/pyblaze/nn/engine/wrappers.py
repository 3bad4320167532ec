"""PyBlaze 1.1.6 path ``pyblaze.nn.engine.wrappers``: the result objects of the engines.

A thin module over :py:mod:`pyblaze.nn`.
"""

from pyblaze.nn import Evaluation, History

__all__ = ["Evaluation", "History"]
