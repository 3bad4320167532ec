"""Utilities of pyblaze: the console :py:class:`ProgressBar`."""

from .progress import ProgressBar, format_metrics

__all__ = ["ProgressBar", "format_metrics"]
