"""The model's parts of a checkpoint: ``state_dict`` (maybe sharded), losses, metrics.

The running losses and the ``metrics`` table belong to the base Model: they are parts of
their own, whatever the model's ``state_dict`` holds.

:py:class:`ModelPart` is the one part whose state may be sharded: when a network found on
the model holds ``DTensor`` parameters (:py:meth:`helios.model.Model.shard_network`), every
rank writes its shards of the model's entry (:py:mod:`helios.trainer.checkpoint.sharded`).
"""

from __future__ import annotations

import numbers
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from helios.core import logging
from helios.model import default_state, sharding
from helios.model.wrapper_keys import accept_wrapper_prefix

from .parts import CheckpointPart

if TYPE_CHECKING:
    from helios.model import Model


class ModelPart(CheckpointPart):
    """The model's part of a checkpoint (key ``model``).

    Args:
        model: the model.
        fast_init: passed to ``Model.load_state_dict`` (a test run restores the networks
            only).
    """

    name = "model"

    def __init__(self, model: Model, fast_init: bool) -> None:
        self._model = model
        self._fast_init = fast_init

    def state_dict(self) -> dict[str, Any]:
        """Return the model's ``state_dict()``."""
        return self._model.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Hand the model its entry (with the run's ``fast_init``).

        The networks on the model's attributes first accept keys with or without the
        ``module.`` prefix of a DDP wrapper (:py:mod:`helios.model.wrapper_keys`), so a
        checkpoint of a distributed run loads into one process and the other way round.
        """
        accept_wrapper_prefix(self._model)
        self._model.load_state_dict(state_dict, fast_init=self._fast_init)

    @property
    def is_sharded(self) -> bool:
        """Whether a network of the model is sharded (its checkpoint entry is shards)."""
        found, _ = default_state.find_state(self._model)
        return any(
            isinstance(obj, torch.nn.Module) and sharding.is_sharded_network(obj)
            for obj in found.values()
        )

    def prepare_to_load(self) -> None:
        """Give the model's optimizers the state tensors to load saved shards into."""
        found, _ = default_state.find_state(self._model)
        for obj in found.values():
            if isinstance(obj, torch.optim.Optimizer):
                sharding.initialize_optimizer_state(obj)


class RunningLossesPart(CheckpointPart):
    """The model's running losses (key ``running_losses``), read from it at each save.

    Args:
        model: the model (its :py:attr:`~helios.model.Model.running_losses`).
    """

    name = "running_losses"

    def __init__(self, model: Model) -> None:
        self._model = model

    def state_dict(self) -> dict[str, Any] | None:
        """Return the model's running sums (``None`` when there are none)."""
        return self._model.running_losses.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Give the model back its running sums."""
        self._model.running_losses.load_state_dict(state_dict)


class MetricsPart(CheckpointPart):
    """The model's ``metrics`` table (key ``model_metrics``), whatever its ``state_dict`` holds.

    The table is the base Model's own, so it is saved apart from the model's
    ``state_dict()`` (which a subclass may write by hand): a resumed run, or a finished one
    run again, finds the metrics of its last validation. Values that a safe load can
    rebuild are saved: numbers, strings, ``None``, tensors (on the CPU), and lists, tuples
    and string-keyed dicts of them; NumPy scalars and arrays are saved as Python numbers
    and tensors. Any other value is left out, with one warning naming it.

    Args:
        model: the model (its :py:attr:`~helios.model.Model.metrics`).
    """

    name = "model_metrics"

    def __init__(self, model: Model) -> None:
        self._model = model
        self._warned = False

    def state_dict(self) -> dict[str, Any] | None:
        """Return the savable entries of the metrics table (``None`` when it is empty)."""
        saved: dict[str, Any] = {}
        left_out: list[str] = []
        for key, value in self._model.metrics.items():
            converted = _savable(value)
            if isinstance(key, str) and converted is not _UNSAVABLE:
                saved[key] = converted
            else:
                left_out.append(f"{key!r} ({type(value).__name__})")
        if left_out and not self._warned:
            self._warned = True
            message = (
                f"the metrics table of model '{self._model.save_name}' holds values a "
                f"checkpoint cannot keep safely: {', '.join(left_out)}; they are not saved "
                "(numbers, strings, tensors and lists or dicts of them are)"
            )
            logging.get_root_logger().warning(message)
            warnings.warn(message, UserWarning, stacklevel=2)
        return saved or None

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Put the saved metrics back into the model's table."""
        table = self._model.metrics
        table.clear()
        table.update(state_dict)


_UNSAVABLE = object()


def _savable(value: Any, depth: int = 0) -> Any:
    """The value as a safe load rebuilds it, or ``_UNSAVABLE``."""
    if value is None or isinstance(value, bool | str | int | float):
        return value
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, np.generic) and not isinstance(value, np.object_):
        return _savable(value.item(), depth)
    if isinstance(value, np.ndarray) and value.dtype.kind in "biufc":
        return torch.from_numpy(np.array(value))
    if isinstance(value, numbers.Real):
        return float(value)
    if depth < 4 and isinstance(value, list | tuple):
        items = [_savable(item, depth + 1) for item in value]
        if any(item is _UNSAVABLE for item in items):
            return _UNSAVABLE
        return items if isinstance(value, list) else tuple(items)
    if depth < 4 and isinstance(value, dict) and all(isinstance(k, str) for k in value):
        entries = {k: _savable(v, depth + 1) for k, v in value.items()}
        return _UNSAVABLE if any(v is _UNSAVABLE for v in entries.values()) else entries
    return _UNSAVABLE


__all__ = ["MetricsPart", "ModelPart", "RunningLossesPart"]
