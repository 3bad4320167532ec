"""The model's parts of a checkpoint: its ``state_dict`` (maybe sharded) and running losses.

:py:class:`ModelPart` is the one part whose state may be sharded: when a network found on
the model holds ``DTensor`` parameters (:py:meth:`helios.model.Model.shard_network`), every
rank writes its shards of the model's entry (:py:mod:`helios.trainer.checkpoint.sharded`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

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


__all__ = ["ModelPart", "RunningLossesPart"]
