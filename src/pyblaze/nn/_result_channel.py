"""How a run in spawned processes sends its results back to the launching process."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from typing import Any

import torch

from pyblaze.nn._tensors import to_device


class ResultChannel:
    """A file through which rank 0 of spawned processes returns a run's state.

    When several GPUs are used without ``torchrun``, helios trains in new processes; the
    weights, optimizer states and history they reach are written here by rank 0 and read
    back by the process that called ``train``. The channel is pickled with the model that
    helios sends to those processes.
    """

    def __init__(self) -> None:
        self._path: str | None = None

    @contextlib.contextmanager
    def open(self, spawned: bool) -> Iterator[None]:
        """Make the channel usable while the run lasts (only if it spawns processes).

        Args:
            spawned: whether the run trains in spawned processes.
        """
        if not spawned:
            yield
            return
        with tempfile.TemporaryDirectory() as folder:
            self._path = os.path.join(folder, "result.pt")
            try:
                yield
            finally:
                self._path = None

    @property
    def is_open(self) -> bool:
        """Whether the run trains in spawned processes (and sends its state back)."""
        return self._path is not None

    def send(self, state: dict[str, Any]) -> None:
        """Write a run's state (a copy on the CPU); do nothing when the channel is closed.

        Args:
            state: the state (tensors, optimizer states, history entries).
        """
        if self._path is not None:
            torch.save(to_device(state, "cpu"), self._path)

    def receive(self) -> dict[str, Any] | None:
        """Read the state rank 0 sent.

        Returns:
            The state, or ``None`` when the channel is closed (the run did not spawn).
        """
        if self._path is None:
            return None
        result: dict[str, Any] = torch.load(self._path, map_location="cpu", weights_only=True)
        return result


__all__ = ["ResultChannel"]
