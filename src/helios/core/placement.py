"""Where a Model or Plugin runs: the state a run sets on both before it starts.

:py:class:`RunTrainer` is the trainer as the model, the plug-ins and the data module see it
(:py:class:`helios.trainer.Trainer` is one). It is a Protocol so that these lower packages
name the trainer's type without importing the trainer: imports go one way, from the
trainer down to the model, the plug-ins, the data and the core.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from .precision import Precision
from .utils import get_from_optional


class RunTrainer(Protocol):
    """What a model, plug-in or data module may read from the trainer that runs it.

    Attributes:
        rank: the global rank of this process.
        local_rank: the rank of this process on its node.
        plugins: the registered plug-ins, keyed by their id.
        train_exceptions: exception types that ``fit`` re-raises.
        test_exceptions: exception types that ``test`` re-raises.
        queue: the queue for results of spawned ranks (``None`` in one process).
        model: the model of the current run.
        datamodule: the data module of the current run.
    """

    rank: int
    local_rank: int
    plugins: dict[str, Any]
    train_exceptions: list[type[Exception]]
    test_exceptions: list[type[Exception]]
    queue: Any
    model: Any
    datamodule: Any

    @property
    def precision(self) -> Precision:
        """The precision of the current run (autocast settings and gradient scaler)."""

    @property
    def accumulation_steps(self) -> int:
        """Batches per iteration."""


class RunPlacement:
    """The trainer, device, rank and distribution flags shared by models and plug-ins.

    The :py:class:`~helios.trainer.Trainer` sets every property when ``fit``/``test`` starts,
    before calling ``setup``.

    Args:
        owner: how the object is named in error messages, e.g. ``"model 'classifier'"``.
    """

    def __init__(self, owner: str) -> None:
        self._owner = owner
        self._trainer: RunTrainer | None = None
        self._is_distributed = False
        self._map_loc: str | dict[str, str] = ""
        self._device: torch.device | None = None
        self._rank = 0

    @property
    def is_distributed(self) -> bool:
        """Whether the run is distributed (several processes)."""
        return self._is_distributed

    @is_distributed.setter
    def is_distributed(self, val: bool) -> None:
        self._is_distributed = val

    @property
    def map_loc(self) -> str | dict[str, str]:
        """Where the weights of loaded checkpoints or pre-trained files are mapped to."""
        return self._map_loc

    @map_loc.setter
    def map_loc(self, loc: str | dict[str, str]) -> None:
        self._map_loc = loc

    @property
    def device(self) -> torch.device:
        """The device of the current process (set by the trainer).

        Raises:
            AssertionError: if the trainer has not set the device yet.
        """
        device = self._device
        # Read in every train_step (often twice): one attribute test, no call, when set.
        return device if device is not None else get_from_optional(device)

    @device.setter
    def device(self, dev: torch.device) -> None:
        self._device = dev

    @property
    def rank(self) -> int:
        """The local rank (device index) of the current process; 0 when not distributed.

        As in Helios 1.2.7 this is the rank *on this node*: in a job over several nodes,
        one process per node sees 0. Use :py:attr:`global_rank` for "once in the job" and
        :py:attr:`local_rank` where the name should say which.
        """
        return self._rank

    @rank.setter
    def rank(self, r: int) -> None:
        self._rank = r

    @property
    def local_rank(self) -> int:
        """The rank of this process on its node, its device index (the same as ``rank``).

        Added in Helios 1.3.0.
        """
        return self._rank

    @property
    def global_rank(self) -> int:
        """The rank of this process among all processes of the job, over every node.

        0 when not distributed, and before the trainer has been set. Added in Helios 1.3.0.
        """
        if self._trainer is None or not self._is_distributed:
            return 0
        return self._trainer.rank

    @property
    def trainer(self) -> RunTrainer:
        """The trainer of the current run.

        Raises:
            RuntimeError: if it is read before the trainer has set it.
        """
        if self._trainer is None:
            raise RuntimeError(
                f"the trainer has not been set on {self._owner}; the Trainer sets it "
                "when fit/test starts"
            )
        return self._trainer

    @trainer.setter
    def trainer(self, t: RunTrainer) -> None:
        self._trainer = t
