"""A :py:class:`torch.nn.DataParallel` that lets the wrapped module's attributes through."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn


class DataParallel(nn.DataParallel):
    """:py:class:`torch.nn.DataParallel` that forwards unknown attributes to the module.

    ``wrapped.decoder`` works when the wrapped model has a ``decoder``: attributes that are
    not the wrapper's own are looked up on :py:attr:`module`. If the attribute is itself a
    module, it is returned wrapped in a ``DataParallel`` with the same devices (one wrapper
    per submodule, reused), so calling it also runs on every GPU. Use ``.module`` for the
    plain model. Without CUDA, the wrapper just calls the module.

    Args:
        model: the module to run in parallel.
        device_ids: the GPUs (all by default).
        output_device: the GPU that receives the outputs (the first of ``device_ids``).
        dim: the dimension along which inputs are split.
    """

    def __init__(
        self,
        model: nn.Module,
        device_ids: Sequence[int | torch.device] | None = None,
        output_device: int | torch.device | None = None,
        dim: int = 0,
    ) -> None:
        super().__init__(model, device_ids, output_device, dim)
        self._wrapped_children: dict[int, DataParallel] = {}

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            pass
        module = super().__getattr__("module")
        value = getattr(module, name)
        if not isinstance(value, nn.Module):
            return value
        own = self.__dict__
        cache: dict[int, DataParallel] = own.setdefault("_wrapped_children", {})
        wrapper = cache.get(id(value))
        if wrapper is None or wrapper.module is not value:
            wrapper = DataParallel(
                value,
                device_ids=own.get("device_ids") or None,
                output_device=own.get("output_device"),
                dim=own.get("dim", 0),
            )
            cache[id(value)] = wrapper
        return wrapper


__all__ = ["DataParallel"]
