"""The optimizer registry and its factory function."""

from __future__ import annotations

import inspect
from typing import Any

from torch import optim

from helios.core.utils import Registry

OPTIMIZER_REGISTRY = Registry("optimizer")
"""Registry of optimizers, pre-filled with every optimizer class ``torch.optim`` exports."""


def _torch_optimizers() -> list[type[optim.Optimizer]]:
    # Discovered rather than listed so that new torch releases (e.g. Adafactor, Muon) are
    # picked up without a code change.
    found: list[type[optim.Optimizer]] = []
    for name in optim.__all__:
        obj = getattr(optim, name, None)
        if inspect.isclass(obj) and issubclass(obj, optim.Optimizer) and obj is not optim.Optimizer:
            found.append(obj)
    return found


OPTIMIZER_REGISTRY.register_all(_torch_optimizers())


def create_optimizer(type_name: str, *args: Any, **kwargs: Any) -> optim.Optimizer:
    """Create an optimizer registered in :py:data:`OPTIMIZER_REGISTRY`."""
    return OPTIMIZER_REGISTRY.create(type_name, *args, **kwargs)
