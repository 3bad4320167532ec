"""The learning rate scheduler registry and its factory function."""

from __future__ import annotations

import inspect
from typing import Any

from torch.optim import lr_scheduler

from helios.core.utils import Registry

SCHEDULER_REGISTRY = Registry("scheduler")
"""Registry of schedulers.

It holds every scheduler class of ``torch.optim.lr_scheduler`` plus the custom
:py:class:`~helios.scheduler.schedulers.CosineAnnealingRestartLR`,
:py:class:`~helios.scheduler.schedulers.MultiStepRestartLR` and
:py:class:`~helios.scheduler.schedulers.WarmupCosineLR`.
"""


def _torch_schedulers() -> list[type]:
    # Discovered rather than listed so that schedulers added by newer torch releases are
    # registered too. The abstract base classes are left out.
    found: list[type] = []
    for name in getattr(lr_scheduler, "__all__", dir(lr_scheduler)):
        obj = getattr(lr_scheduler, name, None)
        if not inspect.isclass(obj) or obj.__name__ != name:
            continue
        if obj in (lr_scheduler.LRScheduler, lr_scheduler._LRScheduler):
            continue
        if issubclass(obj, lr_scheduler.LRScheduler) or obj is lr_scheduler.ReduceLROnPlateau:
            found.append(obj)
    return found


SCHEDULER_REGISTRY.register_all(_torch_schedulers())


def create_scheduler(type_name: str, *args: Any, **kwargs: Any) -> lr_scheduler.LRScheduler:
    """Create a learning rate scheduler registered in :py:data:`SCHEDULER_REGISTRY`."""
    return SCHEDULER_REGISTRY.create(type_name, *args, **kwargs)
