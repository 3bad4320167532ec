"""NumPy helpers (PyBlaze 1.1.6 ``pyblaze.utils.numpy``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt


def find_contexts(
    array: npt.NDArray[Any], context_size: int, exclude_pivot: bool = False
) -> npt.NDArray[Any] | tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    """Extract every window of ``context_size`` consecutive values along the last axis.

    An array of shape ``[..., N]`` gives ``[..., N - C + 1, C]`` windows (``C`` is
    ``context_size``). With ``exclude_pivot`` (``C`` must be odd) the middle value of each
    window is cut out: the windows have ``C - 1`` values and a second array ``[..., W]``
    holds the middle values, as used to sample (context, target) pairs from random walks
    (DeepWalk). PyBlaze 1.1.6 compiled this with numba; it is a strided view here.

    Args:
        array: the values.
        context_size: the window size ``C`` (at least 2).
        exclude_pivot: cut the middle value out of each window and return it separately.

    Returns:
        The windows, and with ``exclude_pivot`` also the middle values (both new arrays).

    Raises:
        ValueError: if ``context_size`` is below 2, even with ``exclude_pivot``, or larger
            than the last axis.
    """
    array = np.asarray(array)
    if isinstance(context_size, bool) or not isinstance(context_size, int) or context_size < 2:
        raise ValueError(f"context_size must be an int >= 2, got {context_size!r}")
    if exclude_pivot and context_size % 2 == 0:
        raise ValueError(f"context_size must be odd with exclude_pivot=True, got {context_size}")
    if array.ndim == 0 or array.shape[-1] < context_size:
        raise ValueError(
            f"context_size={context_size} is larger than the last axis of the array "
            f"(shape {array.shape})"
        )
    windows = np.lib.stride_tricks.sliding_window_view(array, context_size, axis=-1).copy()
    if not exclude_pivot:
        return windows
    middle = context_size // 2
    keep = [i for i in range(context_size) if i != middle]
    return windows[..., keep], windows[..., middle].copy()


__all__ = ["find_contexts"]
