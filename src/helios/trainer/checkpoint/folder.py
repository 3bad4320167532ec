"""The folder of one run's checkpoints, as the checkpoint code sees it (local or a store).

:py:class:`CheckpointFolder` is the interface; :py:class:`~.storage.LocalFolder` (a path on
this machine) and :py:class:`~.store.StoreFolder` (an object store, through fsspec)
implement it, and :py:func:`~.storage.open_folder` picks one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .layout import is_checkpoint_name
from .locations import Location


def check_deletable(name: str) -> None:
    """Refuse to delete anything but a bare checkpoint name of the folder.

    Args:
        name: what a folder is asked to delete.

    Raises:
        ValueError: if ``name`` is not a bare checkpoint name
            (:py:func:`~helios.trainer.checkpoint.layout.is_checkpoint_name`).
    """
    if not is_checkpoint_name(name):
        raise ValueError(f"{name!r} is not a checkpoint name: not deleted")


_MARKER_NAME = re.compile(r"^\.helios-[a-z]+-[0-9a-f]+$")


def check_marker_name(name: str) -> None:
    """Refuse a marker name that is not ``.helios-<what>-<hex>`` (a hidden helios file).

    Args:
        name: the marker's name.

    Raises:
        ValueError: for any other name (it could be a checkpoint's, or leave the folder).
    """
    if not _MARKER_NAME.match(name):
        raise ValueError(f"{name!r} is not a helios marker name (.helios-<what>-<hex>)")


class CheckpointFolder:
    """The folder of one run's checkpoints, local or in a store (see the module docstring).

    Checkpoints are named by their file or folder name in it (``<name>.pth``, ``<name>.dcp``).
    """

    is_remote = False
    """Whether the folder is in an object store (saves there always upload in the background)."""

    @property
    def root(self) -> Location:
        """The folder itself."""
        raise NotImplementedError

    def location(self, name: str) -> Location:
        """Return where checkpoint ``name`` is (what messages and the public API show)."""
        return self.root / name

    def prepare(self) -> None:
        """Create the folder and remove what interrupted saves left (the run's owner)."""
        raise NotImplementedError

    def names(self) -> list[str]:
        """Return the checkpoints the folder holds, newest first (see :py:mod:`.layout`)."""
        raise NotImplementedError

    def is_sharded(self, name: str) -> bool:
        """Whether checkpoint ``name`` is a sharded one (a ``.dcp`` folder)."""
        raise NotImplementedError

    def read(self, name: str, map_location: Any = None) -> dict[str, Any]:
        """Read checkpoint ``name`` (the ``helios.pth`` of a sharded one) and check it.

        Raises:
            ValueError: if it is incomplete, truncated or not a checkpoint.
            RuntimeError: if it lacks keys every checkpoint has, or a newer helios wrote it.
            OSError: if it cannot be read.
            pickle.UnpicklingError: if it holds a type not registered for safe loading.
        """
        raise NotImplementedError

    def write(self, contents: dict[str, Any], name: str) -> None:
        """Write a one-file checkpoint; it is visible only once complete.

        Raises:
            CheckpointWriteError: naming the checkpoint and the cause.
        """
        raise NotImplementedError

    def begin_sharded(self, name: str) -> None:
        """Make room for the shards of checkpoint ``name`` (before any rank writes)."""
        raise NotImplementedError

    def shard_writer(self, name: str) -> Any:
        """Return the Distributed Checkpoint storage writer of checkpoint ``name``'s shards."""
        raise NotImplementedError

    def commit_sharded(self, contents: dict[str, Any], name: str) -> None:
        """Add ``helios.pth`` to the written shards and make the checkpoint visible (rank 0)."""
        raise NotImplementedError

    def shard_reader(self, name: str) -> Any:
        """Return a Distributed Checkpoint storage reader of checkpoint ``name``'s shards."""
        raise NotImplementedError

    def read_metadata(self, name: str) -> Any:
        """Read the shard index of sharded checkpoint ``name`` (safely)."""
        raise NotImplementedError

    def delete(self, name: str) -> None:
        """Delete checkpoint ``name`` (first made invisible, then its data)."""
        raise NotImplementedError

    def write_index(self, data: Mapping[str, Any]) -> None:
        """Write the retention index ``checkpoints.json`` (atomically)."""
        raise NotImplementedError

    def read_index(self) -> dict[str, Any] | None:
        """Read the retention index (``None`` if missing or unreadable)."""
        raise NotImplementedError

    def write_marker(self, name: str, text: str) -> None:
        """Write a small hidden marker ``name`` (``.helios-<what>-<hex>``) holding ``text``.

        Markers are never checkpoints; the check that every rank sees the folder uses one.

        Raises:
            ValueError: for a name that is not a marker's.
            OSError: if it cannot be written.
        """
        raise NotImplementedError

    def read_marker(self, name: str) -> str | None:
        """Return the text of marker ``name``, or ``None`` if it cannot be read."""
        raise NotImplementedError

    def delete_marker(self, name: str) -> None:
        """Delete marker ``name`` (a missing one is no error)."""
        raise NotImplementedError

    def exists(self, name: str) -> bool:
        """Whether checkpoint ``name`` is in the folder and visible."""
        return name in self.names()

    def is_link(self, name: str) -> bool:
        """Whether ``name`` is a symbolic link (never followed to read or delete)."""
        return False

    def lock(self) -> Any:
        """Return the claim of one run on the folder (``acquire``/``release``)."""
        raise NotImplementedError


__all__ = ["CheckpointFolder", "check_deletable", "check_marker_name"]
