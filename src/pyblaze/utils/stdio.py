"""Console output (PyBlaze 1.1.6 ``pyblaze.utils.stdio``): the progress bar."""

from pyblaze.utils import ProgressBar

__all__ = ["ProgressBar"]
