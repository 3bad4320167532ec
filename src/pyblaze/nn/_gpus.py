"""GPU selection: what the ``gpu`` argument of ``train``, ``evaluate`` and ``predict`` means.

The settings are listed in the docstring of :py:mod:`pyblaze.nn.engines`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

GpuArg = bool | int | str | Sequence[int] | None


def resolve_gpu(gpu: GpuArg, multiple: bool = True) -> list[int]:
    """Turn a ``gpu`` argument into the list of GPU ids to use (empty for the CPU).

    Args:
        gpu: ``'auto'``, ``True``, ``False``, a GPU id or a list of GPU ids (see the module
            docstring).
        multiple: whether several GPUs may be used; if not, ``'auto'`` picks one GPU and a
            list must have one entry.

    Returns:
        The GPU ids, without duplicates; ``[]`` means the CPU.

    Raises:
        TypeError: if ``gpu`` has an unsupported type.
        ValueError: if ``gpu`` names a GPU that does not exist, requests a GPU without
            CUDA, is an unknown string or an empty list, or lists several GPUs when
            ``multiple`` is false.
    """
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if isinstance(gpu, bool):
        if not gpu:
            return []
        if count == 0:
            raise ValueError(
                "gpu=True requests a GPU, but CUDA is not available; pass gpu=False (CPU) "
                "or gpu='auto'"
            )
        return [_most_free_gpu(count)]
    if isinstance(gpu, str):
        if gpu != "auto":
            raise ValueError(
                f"gpu={gpu!r} is not a valid setting; expected 'auto', True, False, a GPU "
                "id or a list of GPU ids"
            )
        if count == 0:
            return []
        return list(range(count)) if multiple else [_most_free_gpu(count)]
    if isinstance(gpu, int):
        return [_check_gpu_id(gpu, count)]
    if isinstance(gpu, Sequence):
        if len(gpu) == 0:
            raise ValueError("gpu=[] selects no device; pass gpu=False for the CPU or list GPU ids")
        ids: list[int] = []
        for entry in gpu:
            if isinstance(entry, bool) or not isinstance(entry, int):
                raise TypeError(
                    f"gpu={list(gpu)!r} must list GPU ids as ints, but contains "
                    f"{entry!r} of type {type(entry).__name__}"
                )
            checked = _check_gpu_id(entry, count)
            if checked not in ids:
                ids.append(checked)
        if len(ids) > 1 and not multiple:
            raise ValueError(
                f"gpu={list(gpu)!r} lists several GPUs, but this engine supports only one"
            )
        return ids
    raise TypeError(
        "gpu must be 'auto', True, False, a GPU id or a list of GPU ids, but received "
        f"{gpu!r} of type {type(gpu).__name__}"
    )


def _check_gpu_id(gpu: int, count: int) -> int:
    if count == 0:
        raise ValueError(f"gpu={gpu} requests GPU {gpu}, but CUDA is not available")
    if not 0 <= gpu < count:
        raise ValueError(
            f"gpu={gpu} is not a valid GPU id; this machine has {count} GPU(s), with ids "
            f"0 to {count - 1}"
        )
    return gpu


def _most_free_gpu(count: int) -> int:
    free = [torch.cuda.mem_get_info(i)[0] for i in range(count)]
    return max(range(count), key=lambda i: (free[i], -i))


def device_of(gpus: list[int]) -> torch.device:
    """Return the device of a resolved GPU list: its first GPU, or the CPU when empty.

    Args:
        gpus: the result of :py:func:`resolve_gpu`.

    Returns:
        The device.
    """
    return torch.device("cuda", gpus[0]) if gpus else torch.device("cpu")


__all__ = ["GpuArg", "device_of", "resolve_gpu"]
