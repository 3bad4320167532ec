"""PyBlaze 1.1.6 path ``pyblaze.nn.utils``: the estimator mixin, configs, ``DataParallel``.

A thin module over :py:mod:`pyblaze.nn`, where the classes live.
"""

from pyblaze.nn import Config, Configurable, DataParallel, Estimator

__all__ = ["Config", "Configurable", "DataParallel", "Estimator"]
