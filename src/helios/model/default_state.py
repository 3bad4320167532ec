"""The default checkpoint state of a Model: the stateful objects found on its attributes.

:py:meth:`helios.model.Model.state_dict` saves, under the name of the attribute that holds
it, the ``state_dict()`` of every attribute that is a network (``torch.nn.Module``), an
optimizer, an LR scheduler or a gradient scaler. Lists, tuples and dicts of them (one level
deep) are saved as ``"<attribute>.<index or key>"``. A ``DistributedDataParallel``,
``DataParallel`` or ``torch.compile`` wrapper is saved by the module it wraps, so the keys
and the saved weights do not depend on the wrapping. An object reachable under two
attributes (a network and its wrapper) is saved once, under the first attribute set.

What the default cannot know it cannot save: tensors, NumPy arrays, random generators and
other objects with a ``state_dict`` kept as attributes restart from their initial values
after a resume. Such attributes (or a model with nothing to save at all) are reported
loudly, once, when the first checkpoint is written.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from helios.core import logging

# Set by Model and RunPlacement themselves: their state is not the model's training state.
BASE_ATTRIBUTES = frozenset(
    {
        "_owner",
        "_trainer",
        "_is_distributed",
        "_map_loc",
        "_device",
        "_rank",
        "_save_name",
        "_loss_items",
        "_running_losses",
        "_val_scores",
        "_test_scores",
        "_metrics",
        "_network_modes",
        "_default_state_reported",
    }
)

_SAVED_TYPES: tuple[type, ...] = (
    nn.Module,
    torch.optim.Optimizer,
    torch.optim.lr_scheduler.LRScheduler,
    torch.optim.lr_scheduler.ReduceLROnPlateau,
    torch.amp.GradScaler,
)
_UNSAVED_TYPES: tuple[type, ...] = (
    torch.Tensor,
    np.ndarray,
    torch.Generator,
    random.Random,
    np.random.Generator,
    np.random.RandomState,
)


def unwrap(obj: Any) -> Any:
    """Return the module inside DDP, DataParallel and ``torch.compile`` wrappers."""
    while isinstance(obj, nn.Module):
        if isinstance(obj, nn.parallel.DistributedDataParallel | nn.DataParallel):
            obj = obj.module
        elif isinstance(getattr(obj, "_orig_mod", None), nn.Module):
            obj = obj._orig_mod
        else:
            break
    return obj


def _entries(name: str, value: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield f"{name}.{index}", item
    elif isinstance(value, dict) and all(isinstance(key, str) for key in value):
        for key, item in value.items():
            yield f"{name}.{key}", item
    else:
        yield name, value


def find_state(model: Any) -> tuple[dict[str, Any], list[str]]:
    """Find the attributes of a model that the default state holds, and those it misses.

    Args:
        model: the model.

    Returns:
        The saved objects by key (wrappers already unwrapped), and a description of each
        attribute that holds state the default does not save.
    """
    saved: dict[str, Any] = {}
    unsaved: list[str] = []
    seen: set[int] = set()
    for name, value in vars(model).items():
        if name in BASE_ATTRIBUTES:
            continue
        for key, item in _entries(name, value):
            item = unwrap(item)
            if isinstance(item, _SAVED_TYPES):
                if id(item) not in seen:
                    seen.add(id(item))
                    saved[key] = item
            elif getattr(type(item), "_state_kept_apart", False):
                continue  # a plug-in is a checkpoint part of its own; the data has no state
            elif isinstance(item, _UNSAVED_TYPES) or (
                callable(getattr(item, "state_dict", None)) and not isinstance(item, type)
            ):
                unsaved.append(f"{key} ({type(item).__name__})")
    return saved, unsaved


def find_networks(model: Any) -> list[nn.Module]:
    """Find the networks of a model as its default state does, wrappers kept.

    A network wrapped by DDP or ``torch.compile`` is returned as the wrapper (whose
    ``modules()`` include the network); each module is returned once.

    Args:
        model: the model.

    Returns:
        The networks, in attribute order.
    """
    found: list[nn.Module] = []
    seen: set[int] = set()
    for name, value in vars(model).items():
        if name in BASE_ATTRIBUTES:
            continue
        for _, item in _entries(name, value):
            if isinstance(item, nn.Module) and id(unwrap(item)) not in seen:
                seen.add(id(unwrap(item)))
                found.append(item)
    return found


def report_unsaved(model: Any, saved: dict[str, Any], unsaved: list[str]) -> None:
    """Warn (root logger and ``warnings``) about what the default state leaves out.

    Args:
        model: the model.
        saved: the keys the default state holds.
        unsaved: the attributes it misses.
    """
    who = f"model '{model.save_name}' ({type(model).__name__}) does not override state_dict()"
    fix = (
        "Override state_dict() and load_state_dict() (calling super() keeps the default "
        "entries) to save them."
    )
    if not saved:
        message = (
            f"{who}, and the default found no network, optimizer, LR scheduler or gradient "
            "scaler among its attributes: its checkpoints hold nothing of it, and a resumed "
            f"run restarts it from its initial state. {fix}"
        )
    elif unsaved:
        message = (
            f"{who}: its checkpoints hold {', '.join(saved)}, but NOT {', '.join(unsaved)}; "
            f"after a resume these restart from their initial values. {fix}"
        )
    else:
        return
    warn(message)


def warn(message: str) -> None:
    """Warn loudly: a root logger warning (when it is active) and ``warnings.warn``."""
    if logging.is_root_logger_active():
        logging.get_root_logger().warning(message)
    warnings.warn(message, UserWarning, stacklevel=3)


def gather(saved: dict[str, Any]) -> dict[str, Any]:
    """Return ``{key: obj.state_dict()}`` for the saved objects."""
    return {key: obj.state_dict() for key, obj in saved.items()}


def restore(model: Any, state_dict: dict[str, Any], fast_init: bool) -> None:
    """Restore the objects found on a model from a default state.

    Args:
        model: the model (after ``setup``).
        state_dict: the state written by the default ``state_dict``.
        fast_init: restore only the networks (``setup(fast_init=True)`` may build nothing
            else).

    Raises:
        KeyError: if the state and the model's attributes do not match (names them).
    """
    saved, _ = find_state(model)
    if fast_init:
        saved = {key: obj for key, obj in saved.items() if isinstance(obj, nn.Module)}
        state_dict = {key: value for key, value in state_dict.items() if key in saved}
    if not state_dict and saved:
        message = (
            f"the checkpoint holds no state of model '{model.save_name}' (written before "
            f"helios saved a Model's networks by default): {', '.join(saved)} keep their "
            "initial state"
        )
        warn(message)
        return
    missing = [key for key in saved if key not in state_dict]
    unknown = [key for key in state_dict if key not in saved]
    if missing or unknown:
        raise KeyError(
            f"the saved state of model '{model.save_name}' does not match its "
            f"attributes: saved but not on the model: {unknown or 'none'}; on the model but "
            f"not saved: {missing or 'none'}"
        )
    for key, obj in saved.items():
        obj.load_state_dict(state_dict[key])


__all__ = ["find_networks", "find_state", "gather", "report_unsaved", "restore", "unwrap", "warn"]
