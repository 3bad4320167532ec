"""PyBlaze 1.1.6 path ``pyblaze.nn.engine``: the engines and their result objects.

A thin module over :py:mod:`pyblaze.nn`, where the classes live.
"""

from pyblaze.nn import BaseEngine, Evaluation, History, SupervisedEngine

__all__ = ["BaseEngine", "Evaluation", "History", "SupervisedEngine"]
