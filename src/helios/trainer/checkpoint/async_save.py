"""Asynchronous checkpoint saves: a consistent snapshot now, the write in the background.

:py:func:`snapshot` copies a checkpoint's contents off the training path: every tensor is
copied to the CPU (GPU tensors through pinned memory, one synchronisation for all of them),
every other object is deep-copied, so training cannot change what is being written.
:py:class:`BackgroundWriter` then runs the write (temporary file, fsync, rename, then the
retention update) in one thread. At most one write is in flight: the next save and the end
of ``fit`` wait for it, and an error of the write is raised there, naming the file. A crash
during a background write leaves the temporary file (removed at the next start) and the
previous checkpoint the newest valid one.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from typing import Any

import torch

from helios.core import logging

from .io import CheckpointWriteError


def _collect_tensors(obj: Any, found: dict[int, torch.Tensor], seen: set[int]) -> None:
    if isinstance(obj, torch.Tensor):
        found.setdefault(id(obj), obj)
        return
    if id(obj) in seen:
        return
    if isinstance(obj, dict):
        seen.add(id(obj))
        for value in obj.values():
            _collect_tensors(value, found, seen)
    elif isinstance(obj, list | tuple | set | frozenset):
        seen.add(id(obj))
        for value in obj:
            _collect_tensors(value, found, seen)


class SnapshotBuffers:
    """CPU buffers of the previous snapshot, reused by the next one of the same shapes.

    A snapshot is only copied into fresh memory the first time; later saves of the same
    state copy into the buffers of the previous snapshot (whose write has completed), so
    they pay no page faults (and, from a GPU, no pinned allocation).
    """

    def __init__(self) -> None:
        self._free: dict[tuple[Any, ...], list[torch.Tensor]] = {}
        self._taken: list[torch.Tensor] = []

    @staticmethod
    def _key(shape: torch.Size, dtype: torch.dtype, pinned: bool) -> tuple[Any, ...]:
        return (tuple(shape), dtype, pinned)

    def take(self, source: torch.Tensor, pinned: bool) -> torch.Tensor:
        """Return a contiguous CPU tensor shaped like ``source`` (reused when possible)."""
        free = self._free.get(self._key(source.shape, source.dtype, pinned))
        if free:
            buffer = free.pop()
        else:
            buffer = torch.empty(source.shape, dtype=source.dtype, pin_memory=pinned)
        self._taken.append(buffer)
        return buffer

    def recycle(self) -> None:
        """Offer the buffers of the last snapshot to the next (its write has completed)."""
        self._free = {}
        for buffer in self._taken:
            key = self._key(buffer.shape, buffer.dtype, buffer.is_pinned())
            self._free.setdefault(key, []).append(buffer)
        self._taken = []


def snapshot(contents: Any, buffers: SnapshotBuffers | None = None) -> Any:
    """Return a deep copy of checkpoint contents whose tensors all live on the CPU.

    Tensors inside dicts, lists, tuples and sets are copied (a tensor reached twice is
    copied once, so the copy shares it the same way); any other object is deep-copied.

    Args:
        contents: the gathered checkpoint contents.
        buffers: buffers to copy the tensors into (reused between snapshots); ``None``:
            fresh memory.

    Returns:
        The copy; nothing in it is shared with ``contents``.
    """
    found: dict[int, torch.Tensor] = {}
    _collect_tensors(contents, found, set())
    memo: dict[int, Any] = {}
    devices: set[torch.device] = set()
    for key, tensor in found.items():
        source = tensor.detach()
        on_gpu = source.device.type == "cuda"
        if buffers is not None and source.device.type in ("cpu", "cuda"):
            copied = buffers.take(source, pinned=on_gpu)
            copied.copy_(source, non_blocking=on_gpu)
        elif on_gpu:
            copied = torch.empty_like(source, device="cpu", pin_memory=True)
            copied.copy_(source, non_blocking=True)
        else:
            copied = source.to("cpu", copy=True)
        if on_gpu:
            devices.add(source.device)
        memo[key] = copied
    for device in devices:
        torch.cuda.synchronize(device)
    # Keep the originals alive while copy.deepcopy consults the memo by id.
    memo[id(memo)] = list(found.values())
    return copy.deepcopy(contents, memo)


class BackgroundWriter:
    """Runs checkpoint writes in a background thread, one at a time."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._path: Any = None

    @property
    def busy(self) -> bool:
        """Whether a write is in flight."""
        return self._thread is not None and self._thread.is_alive()

    def submit(self, write: Callable[[], None], path: Any) -> None:
        """Wait for the write in flight (raising its error), then start ``write``.

        Args:
            write: writes the checkpoint and applies what follows a durable save.
            path: the checkpoint path (or URL), for messages.
        """
        self.wait()
        self._path = path
        self._thread = threading.Thread(
            target=self._run, args=(write,), name="helios-checkpoint-writer", daemon=False
        )
        self._thread.start()

    def _run(self, write: Callable[[], None]) -> None:
        try:
            write()
        except BaseException as error:  # surfaced in the training thread by wait()
            self._error = error

    def wait(self) -> None:
        """Wait for the write in flight, if any.

        Raises:
            CheckpointWriteError: if the background write failed, naming the file.
        """
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()
        error, self._error = self._error, None
        if error is not None:
            path = self._path
            assert path is not None
            raise CheckpointWriteError(
                f"the background save of checkpoint {path} failed: {error}", path
            ) from error

    def close(self, raise_errors: bool = True) -> None:
        """Wait for the write in flight; log instead of raising if ``raise_errors`` is false.

        Args:
            raise_errors: raise the write's error (else it is logged).
        """
        try:
            self.wait()
        except CheckpointWriteError as error:
            if raise_errors:
                raise
            logging.get_root_logger().error(str(error))


__all__ = ["BackgroundWriter", "SnapshotBuffers", "snapshot"]
