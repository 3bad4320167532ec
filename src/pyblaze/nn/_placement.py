"""Where an engine's model lives during a training run: DDP, or a sharded copy."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from pyblaze.nn._sharded import ShardedCopy
from pyblaze.nn._tensors import module_device, move_optimizer_state

if TYPE_CHECKING:
    from pyblaze.nn._protocols import Engine


class ModelPlacement:
    """Moves an engine's model and its optimizers' state to a run's device and back.

    Made when ``train`` starts, in the launching process: it remembers the model's device
    then, and :py:meth:`restore` returns the model there once the run is over.

    A distributed run wraps the model in ``DistributedDataParallel``, or, with ``shard``,
    trains a sharded copy of it (:py:class:`~pyblaze.nn._sharded.ShardedCopy`), whose
    final weights and optimizer states :py:meth:`unwrap` loads into the user's model and
    optimizers.

    Args:
        engine: the engine.
        optimizers: the optimizers of the model, whose state follows its parameters.
        shard: shard the model (FSDP2) instead of replicating it in a distributed run.

    Attributes:
        original: the user's model.
        module: the model the run trains: the user's model, or its sharded copy (never a
            DDP wrapper).
        optimizers: the optimizers.
    """

    def __init__(
        self,
        engine: Engine,
        optimizers: Sequence[torch.optim.Optimizer],
        shard: bool = False,
    ) -> None:
        self._engine = engine
        self.original: nn.Module = engine.model
        self.module: nn.Module = engine.model
        self.optimizers = list(optimizers)
        self.shard = shard
        self._sharded: ShardedCopy | None = None
        self._original_device = module_device(self.module)
        # ``fit(compile=True)`` compiles the model in place for the run only.
        self._compiled_call = getattr(self.module, "_compiled_call_impl", None)

    @property
    def is_sharded(self) -> bool:
        """Whether the run trains a sharded copy of the model now."""
        return self._sharded is not None

    def place(self, device: torch.device, distributed: bool, precision: str = "32") -> None:
        """Put the model on ``device``; in a distributed run, wrap it for DDP or shard it.

        Args:
            device: the device of this process.
            distributed: whether the run has several processes.
            precision: the run's precision (the mixed-precision policy of a sharded model).
        """
        self._engine.device = device
        if distributed and self.shard:
            self._sharded = ShardedCopy(
                self.original, self.optimizers, device, precision, keep=[self._engine]
            )
            self._engine.model = self.module = self._sharded.copy
            return
        self.module.to(device)
        move_optimizer_state(self.optimizers)
        if distributed:
            device_ids = [device.index] if device.type == "cuda" else None
            self._engine.model = nn.parallel.DistributedDataParallel(
                self.module, device_ids=device_ids
            )

    def full_state(self) -> dict[str, Any]:
        """Gather the sharded copy's full weights and optimizer states (every rank).

        Returns:
            ``{"module": ..., "optimizers": [...]}`` of plain tensors on the user's model's
            device.

        Raises:
            RuntimeError: if the run does not shard the model.
        """
        if self._sharded is None:
            raise RuntimeError("full_state() needs a sharded run")
        return self._sharded.full_state(self._original_device)

    def load_full_state(self, state: dict[str, Any]) -> None:
        """Load full weights and optimizer states into the model the run trains.

        Args:
            state: ``{"module": ..., "optimizers": [...]}``.
        """
        if self._sharded is not None:
            self._sharded.load_full_state(state)
            return
        self.module.load_state_dict(state["module"])
        for optimizer, saved in zip(self.optimizers, state["optimizers"], strict=False):
            optimizer.load_state_dict(saved)

    def unwrap(self, final: dict[str, Any] | None = None) -> None:
        """Give the engine the user's model back (without DDP wrapper or sharded copy).

        Args:
            final: a sharded run's :py:meth:`full_state` at its end, loaded into the user's
                model and optimizers; ``None`` leaves them as they were before the run.
        """
        if self._sharded is not None:
            self._sharded.release(final)
            self._sharded = None
        self._engine.model = self.module = self.original

    def restore(self) -> None:
        """Unwrap the model, undo the run's compile, put the model back on its device.

        The device is the one the model had when ``train`` started.
        """
        self.unwrap()
        self.module._compiled_call_impl = self._compiled_call
        self._engine.end_run()
        self._engine.device = None
        self.module.to(self._original_device)
        move_optimizer_state(self.optimizers)


__all__ = ["ModelPlacement"]
