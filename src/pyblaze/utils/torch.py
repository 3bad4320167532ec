"""Tensor and device helpers (PyBlaze 1.1.6 ``pyblaze.utils.torch``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch.nn.utils.rnn import PackedSequence


def gpu_device(gpu: bool | int) -> torch.device:
    """Return the device for a ``gpu`` setting.

    ``False`` is the CPU; ``True`` is the GPU with the most free memory (as the PyBlaze
    docs describe; 1.1.6 itself picked the GPU on which this process had cached the least
    memory); an int ``i`` is ``cuda:i``.

    Args:
        gpu: the setting.

    Returns:
        The device.

    Raises:
        RuntimeError: if a GPU is requested and CUDA is not available.
        ValueError: if ``gpu`` is an int that is not the id of a GPU.
        TypeError: if ``gpu`` is neither a bool nor an int.
    """
    if isinstance(gpu, bool):
        if not gpu:
            return torch.device("cpu")
        count = torch.cuda.device_count()
        if count == 0:
            raise RuntimeError("gpu=True needs CUDA, but no GPU is available")
        free = [torch.cuda.mem_get_info(i)[0] for i in range(count)]
        return torch.device("cuda", max(range(count), key=lambda i: free[i]))
    if not isinstance(gpu, int):
        raise TypeError(f"gpu must be a bool or an int, got {gpu!r}")
    count = torch.cuda.device_count()
    if not 0 <= gpu < count:
        raise ValueError(f"gpu={gpu} is not a GPU of this machine (GPU ids: {list(range(count))})")
    return torch.device("cuda", gpu)


def to_device(device: torch.device | str, *args: Any) -> Any:
    """Move tensors (also inside lists, tuples and dicts) to a device.

    Non-contiguous dense tensors are made contiguous first; moves are non-blocking.
    :py:class:`~torch.nn.utils.rnn.PackedSequence` objects are moved as a whole; ``None``
    and other objects are returned unchanged.

    Args:
        device: the target device.
        *args: the values; with several, a list of the moved values is returned.

    Returns:
        The moved value, or a list of them for several arguments.
    """

    def move(x: Any) -> Any:
        if isinstance(x, PackedSequence):
            return x.to(torch.device(device), non_blocking=True)  # type: ignore[arg-type]
        if not x.is_sparse and not x.is_contiguous():
            x = x.contiguous()
        return x.to(device, non_blocking=True)

    return _apply(move, torch.Tensor, *args)


def share_memory(*args: Any) -> Any:
    """Move tensors (also inside lists, tuples and dicts) to shared memory.

    Args:
        *args: the values; with several, a list is returned.

    Returns:
        The same structure with the tensors in shared memory.
    """
    return _apply(lambda x: x.share_memory_(), torch.Tensor, *args)


def pin_memory(*args: Any) -> Any:
    """Pin the memory of tensors (also inside lists, tuples and dicts); needs CUDA.

    Args:
        *args: the values; with several, a list is returned.

    Returns:
        The same structure with pinned tensors.
    """
    return _apply(lambda x: x.pin_memory(), torch.Tensor, *args)


def _apply(function: Callable[[Any], Any], kind: type, *args: Any) -> Any:
    if len(args) != 1:
        return [_apply(function, kind, arg) for arg in args]
    value = args[0]
    if isinstance(value, PackedSequence | kind):
        return function(value)
    if isinstance(value, list):
        return [_apply(function, kind, v) for v in value]
    if isinstance(value, tuple):
        items = [_apply(function, kind, v) for v in value]
        return type(value)(*items) if hasattr(value, "_fields") else tuple(items)
    if isinstance(value, Mapping):
        return {k: _apply(function, kind, v) for k, v in value.items()}
    return value


__all__ = ["gpu_device", "pin_memory", "share_memory", "to_device"]
