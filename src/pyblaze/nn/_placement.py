"""Where an engine's model lives during a training run, and the DDP wrapper around it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from pyblaze.nn._tensors import module_device, move_optimizer_state

if TYPE_CHECKING:
    from pyblaze.nn.engines import BaseEngine


class ModelPlacement:
    """Moves an engine's model and its optimizers' state to a run's device and back.

    Made when ``train`` starts, in the launching process: it remembers the model's device
    then, and :py:meth:`restore` returns the model there once the run is over.

    Args:
        engine: the engine.
        optimizers: the optimizers of the model, whose state follows its parameters.
    """

    def __init__(self, engine: BaseEngine, optimizers: Sequence[torch.optim.Optimizer]) -> None:
        self._engine = engine
        self.module = engine.model
        self.optimizers = list(optimizers)
        self._original_device = module_device(self.module)
        # ``fit(compile=True)`` compiles the model in place for the run only.
        self._compiled_call = getattr(self.module, "_compiled_call_impl", None)

    def place(self, device: torch.device, distributed: bool) -> None:
        """Put the model on ``device``; in a distributed run, wrap it for DDP.

        Args:
            device: the device of this process.
            distributed: whether the run has several processes.
        """
        self.module.to(device)
        move_optimizer_state(self.optimizers)
        self._engine.device = device
        if distributed:
            device_ids = [device.index] if device.type == "cuda" else None
            self._engine.model = nn.parallel.DistributedDataParallel(
                self.module, device_ids=device_ids
            )

    def unwrap(self) -> None:
        """Give the engine its plain model back (without the DDP wrapper)."""
        self._engine.model = self.module

    def restore(self) -> None:
        """Unwrap the model, undo the run's compile, put the model back on its device.

        The device is the one the model had when ``train`` started.
        """
        self.unwrap()
        self.module._compiled_call_impl = self._compiled_call
        self._engine._end_run()
        self._engine.device = None
        self.module.to(self._original_device)
        move_optimizer_state(self.optimizers)


__all__ = ["ModelPlacement"]
