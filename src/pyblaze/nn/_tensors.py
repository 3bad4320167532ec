"""Tensor helpers of the engines: moving data between devices, joining batches, sizes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

# Type tuples, not ``X | Y`` unions: a union is built anew each time the line runs.
_SEQUENCE = (list, tuple)
_NESTED = (torch.Tensor, list, tuple, Mapping)


def module_device(module: nn.Module) -> torch.device:
    """Return the device of a module's first parameter or buffer (the CPU if it has none).

    Args:
        module: the module.

    Returns:
        The device.
    """
    for parameter in module.parameters():
        return parameter.device
    for buffer in module.buffers():
        return buffer.device
    return torch.device("cpu")


def to_device(data: Any, device: torch.device | str) -> Any:
    """Move tensors, and tensors nested in lists, tuples and dicts, to a device.

    Named tuples keep their type, :py:class:`~torch.nn.utils.rnn.PackedSequence` is moved
    as a whole, and anything else (``None``, numbers, strings, ...) is returned as is.

    Args:
        data: the data.
        device: the target device.

    Returns:
        The data on the device.
    """
    target = device if isinstance(device, torch.device) else torch.device(device)
    return _move(data, target, target.type == "cuda")


def _move(data: Any, target: torch.device, non_blocking: bool) -> Any:
    # Most batches are tensors or tuples/lists of tensors: test those first, and the
    # Mapping ABC (a slower isinstance) last.
    if isinstance(data, torch.Tensor):
        return data.to(target, non_blocking=True) if non_blocking else data.to(target)
    if isinstance(data, PackedSequence):  # a named tuple, moved as a whole
        packed: Any = data  # its stubs do not list the device overload
        return packed.to(target, non_blocking=non_blocking)
    if isinstance(data, _SEQUENCE):
        items = [
            (v.to(target, non_blocking=True) if non_blocking else v.to(target))
            if isinstance(v, torch.Tensor)
            else _move(v, target, non_blocking)
            for v in data
        ]
        kind = type(data)
        if kind is tuple or kind is list:
            return kind(items)
        if hasattr(data, "_fields"):  # a named tuple
            return kind(*items)
        return kind(items)
    if isinstance(data, Mapping):
        return type(data)({k: _move(v, target, non_blocking) for k, v in data.items()})  # type: ignore[call-arg]
    return data


def concat(items: list[Any]) -> Any:
    """Concatenate per-batch outputs: tensors along dim 0, tuples and dicts element-wise.

    Args:
        items: one output per batch.

    Returns:
        The joined outputs (0-dim tensors are stacked; anything else stays a list).
    """
    if not items:
        return items
    first = items[0]
    if isinstance(first, torch.Tensor):
        if first.dim() == 0:
            return torch.stack(items)
        return torch.cat(items)
    if isinstance(first, tuple | list):
        return type(first)(concat([item[i] for item in items]) for i in range(len(first)))
    if isinstance(first, Mapping):
        return {k: concat([item[k] for item in items]) for k in first}
    return items


def batch_size(batch: Any) -> int:
    """Return the number of samples of a batch: the first dimension of its first tensor.

    Args:
        batch: a tensor, or a list, tuple or dict holding (nested) tensors.

    Returns:
        The size of the first dimension of the first tensor found (1 for a 0-dim tensor or
        a batch without tensors).
    """
    while True:
        if isinstance(batch, torch.Tensor):
            return int(batch.size(0)) if batch.dim() > 0 else 1
        if not isinstance(batch, _SEQUENCE):
            if not isinstance(batch, Mapping):
                return 1
            batch = list(batch.values())
        for item in batch:
            if isinstance(item, _NESTED):
                batch = item
                break
        else:
            return 1


def move_optimizer_state(optimizers: Sequence[torch.optim.Optimizer]) -> None:
    """Move optimizer state (e.g. Adam's moments) to the device of its parameters.

    Args:
        optimizers: the optimizers.
    """
    for optimizer in optimizers:
        if optimizer.state:
            optimizer.load_state_dict(optimizer.state_dict())


__all__ = ["batch_size", "concat", "module_device", "move_optimizer_state", "to_device"]
