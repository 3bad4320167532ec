"""Optimizers of PyBlaze 1.1.6: :py:class:`LAMB`."""

from .lamb import LAMB

__all__ = ["LAMB"]
