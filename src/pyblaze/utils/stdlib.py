"""Small standard-library helpers (PyBlaze 1.1.6 ``pyblaze.utils.stdlib``)."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import TypeVar

T = TypeVar("T")

cached_property = functools.cached_property
"""A property computed once per instance, then cached (:py:class:`functools.cached_property`)."""


def flatten(nested: Iterable[Iterable[T]]) -> list[T]:
    """Flatten a list of lists by one level.

    Args:
        nested: a two-dimensional list (or other iterable of iterables).

    Returns:
        The elements of the inner lists, in order.
    """
    return [element for inner in nested for element in inner]


__all__ = ["cached_property", "flatten"]
