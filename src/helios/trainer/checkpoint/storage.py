"""Where a run's checkpoints live: a folder on this machine, or a folder in an object store.

Every checkpoint operation goes through a
:py:class:`~helios.trainer.checkpoint.folder.CheckpointFolder`, one per run folder
(``<chkpt_root>/<save_name>``):

* :py:class:`LocalFolder`, for a path on this machine: a checkpoint is written to a
  hidden temporary file (or folder), synced and renamed to its name (:py:mod:`.io`); the
  run's claim is an ``flock`` (:py:mod:`helios.trainer.run_folder`).
* :py:class:`~helios.trainer.checkpoint.store.StoreFolder`, for a URL (``s3://``, ``gs://``,
  ``az://``, ``memory://``, any fsspec protocol): an object store has no rename, so a
  checkpoint becomes visible through a commit object written after its data
  (:py:mod:`.store`); the claim is a lease (:py:mod:`.store_lock`).

:py:func:`open_folder` picks one from what the user gave (``file://`` URLs are local
folders). The public discovery and reading functions (:py:func:`find_last_checkpoint`,
:py:func:`find_best_checkpoint`, :py:func:`read_checkpoint`) take a path or a URL.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import warnings
from collections.abc import Mapping
from typing import Any, overload

from helios.core import logging
from helios.trainer.run_folder import RunFolderLock

from .folder import CheckpointFolder, check_deletable, check_marker_name
from .io import (
    commit_sharded,
    prepare_folder,
    prepare_temporary_folder,
    read_local_checkpoint,
    read_metadata,
    save_atomically,
    write_json_atomically,
)
from .layout import (
    INDEX_NAME,
    is_checkpoint_name,
    is_sharded_checkpoint,
    list_local_checkpoints,
    temporary_folder,
)
from .locations import Location, StorePath, as_location
from .shard_index import shard_reader
from .store import StoreFolder


class LocalFolder(CheckpointFolder):
    """A checkpoint folder on this machine: atomic renames, ``fsync`` and ``flock``.

    Args:
        path: the folder.
    """

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path

    @property
    def root(self) -> pathlib.Path:  # noqa: D102
        return self.path

    def location(self, name: str) -> pathlib.Path:  # noqa: D102
        return self.path / name

    def prepare(self) -> None:  # noqa: D102
        prepare_folder(self.path)

    def names(self) -> list[str]:  # noqa: D102
        return [path.name for path in list_local_checkpoints(self.path)]

    def is_sharded(self, name: str) -> bool:  # noqa: D102
        return is_sharded_checkpoint(self.path / name)

    def read(self, name: str, map_location: Any = None) -> dict[str, Any]:  # noqa: D102
        return read_local_checkpoint(self.path / name, map_location)

    def write(self, contents: dict[str, Any], name: str) -> None:  # noqa: D102
        save_atomically(contents, self.path / name)

    def begin_sharded(self, name: str) -> None:  # noqa: D102
        prepare_temporary_folder(self.path / name)

    def shard_writer(self, name: str) -> Any:  # noqa: D102
        import torch.distributed.checkpoint as dcp

        return dcp.FileSystemWriter(temporary_folder(self.path / name), sync_files=True)

    def commit_sharded(self, contents: dict[str, Any], name: str) -> None:  # noqa: D102
        commit_sharded(contents, self.path / name)

    def shard_reader(self, name: str) -> Any:  # noqa: D102
        return shard_reader(self.path / name)

    def read_metadata(self, name: str) -> Any:  # noqa: D102
        return read_metadata(self.path / name)

    def delete(self, name: str) -> None:  # noqa: D102
        check_deletable(name)
        path = self.path / name
        if path.is_dir() and not path.is_symlink():  # a sharded checkpoint
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)

    def write_index(self, data: Mapping[str, Any]) -> None:  # noqa: D102
        write_json_atomically(dict(data), self.path / INDEX_NAME)

    def read_index(self) -> dict[str, Any] | None:  # noqa: D102

        try:
            data = json.loads((self.path / INDEX_NAME).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def write_marker(self, name: str, text: str) -> None:  # noqa: D102
        check_marker_name(name)
        (self.path / name).write_text(text, encoding="utf-8")

    def read_marker(self, name: str) -> str | None:  # noqa: D102
        check_marker_name(name)
        try:
            return (self.path / name).read_text(encoding="utf-8")
        except (OSError, ValueError):
            return None

    def delete_marker(self, name: str) -> None:  # noqa: D102
        check_marker_name(name)
        (self.path / name).unlink(missing_ok=True)

    def exists(self, name: str) -> bool:  # noqa: D102
        path = self.path / name
        return not path.is_symlink() and (path.is_file() or is_sharded_checkpoint(path))

    def is_link(self, name: str) -> bool:  # noqa: D102
        return (self.path / name).is_symlink()

    def lock(self) -> RunFolderLock:  # noqa: D102
        return RunFolderLock(self.path)


def open_folder(
    root: str | os.PathLike[str] | CheckpointFolder,
    storage_options: Mapping[str, Any] | None = None,
) -> LocalFolder | StoreFolder:
    """Return the checkpoint folder of a path or URL.

    Args:
        root: a local path, a ``str`` path or URL, or a folder already opened.
        storage_options: for a URL, passed to fsspec (credentials, ``endpoint_url``...);
            ``None``: the store's usual environment variables (``AWS_ENDPOINT_URL``,
            ``AWS_ACCESS_KEY_ID``...).

    Returns:
        The folder.
    """
    if isinstance(root, LocalFolder | StoreFolder):
        return root
    location = as_location(root)  # type: ignore[arg-type]
    if isinstance(location, StorePath):
        return StoreFolder(location, storage_options)
    return LocalFolder(location)


@overload
def list_checkpoints(
    root: pathlib.Path | None, storage_options: Mapping[str, Any] | None = None
) -> list[pathlib.Path]: ...


@overload
def list_checkpoints(
    root: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None
) -> list[Location]: ...


def list_checkpoints(
    root: str | os.PathLike[str] | None, storage_options: Mapping[str, Any] | None = None
) -> list[Location] | list[pathlib.Path]:
    """List the checkpoints in a folder, newest (highest epoch, then iteration) first.

    Args:
        root: the folder: a path, or the URL of a folder in an object store (``None`` or a
            missing folder gives an empty list). In a store, a save that was interrupted
            (never committed) is not listed.
        storage_options: for a URL, passed to fsspec.

    Returns:
        The checkpoint paths (:py:class:`~helios.trainer.checkpoint.locations.StorePath` URLs
        for a store).
    """
    if root is None:
        return []
    folder = open_folder(root, storage_options)
    return [folder.location(name) for name in folder.names()]


@overload
def find_last_checkpoint(
    root: pathlib.Path | None, storage_options: Mapping[str, Any] | None = None
) -> pathlib.Path | None: ...


@overload
def find_last_checkpoint(
    root: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None
) -> Location | None: ...


def find_last_checkpoint(
    root: str | os.PathLike[str] | None, storage_options: Mapping[str, Any] | None = None
) -> Location | None:
    """Find the newest checkpoint in a folder, local or in an object store.

    Names must contain ``epoch_<e>_iter_<i>``; the newest is the one with the highest epoch,
    then the highest iteration (``epoch_0_iter_0`` included). A checkpoint is a ``.pth``
    file, or a ``.dcp`` folder for a sharded model
    (:py:mod:`helios.trainer.checkpoint.sharded`). In an object store only committed
    checkpoints count (:py:mod:`helios.trainer.checkpoint.store`).

    Args:
        root: the folder where the checkpoints are stored: a path or a URL
            (``"s3://bucket/runs/<save_name>"``).
        storage_options: for a URL, passed to fsspec (``None``: the store's environment
            variables, such as ``AWS_ENDPOINT_URL``).

    Returns:
        The path of the newest checkpoint (a
        :py:class:`~helios.trainer.checkpoint.locations.StorePath`, a ``str`` URL, for a
        store), or ``None`` if there is none.
    """
    checkpoints = list_checkpoints(root, storage_options)
    return checkpoints[0] if checkpoints else None


def read_index(
    root: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None
) -> dict[str, Any] | None:
    """Read the retention index of a checkpoint folder.

    Args:
        root: the checkpoint folder (a path or a store URL).
        storage_options: for a URL, passed to fsspec.

    Returns:
        The index, or ``None`` if there is none or it cannot be read.
    """
    return open_folder(root, storage_options).read_index()


@overload
def find_best_checkpoint(
    root: pathlib.Path | None, storage_options: Mapping[str, Any] | None = None
) -> pathlib.Path | None: ...


@overload
def find_best_checkpoint(
    root: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None
) -> Location | None: ...


def find_best_checkpoint(
    root: str | os.PathLike[str] | None, storage_options: Mapping[str, Any] | None = None
) -> Location | None:
    """Find the best checkpoint of a folder from its index, without opening checkpoints.

    The index exists when the run was trained with ``chkpt_best_metric`` (see
    :py:class:`RetentionPolicy`).

    Args:
        root: the checkpoint folder (``<chkpt_root>/<save_name>``): a path, or a URL of a
            folder in an object store.
        storage_options: for a URL, passed to fsspec (``None``: the store's environment
            variables).

    Returns:
        The path of the best checkpoint (a
        :py:class:`~helios.trainer.checkpoint.locations.StorePath` for a store), or ``None``
        if no index names one that exists.
    """
    if root is None:
        return None
    folder = open_folder(root, storage_options)
    index = folder.read_index()
    if index is None or not isinstance(index.get("best"), str):
        return None
    name = index["best"]
    if not is_checkpoint_name(name) or not folder.exists(name):
        return None
    return folder.location(name)


def read_checkpoint(
    path: str | os.PathLike[str],
    map_location: Any = None,
    storage_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Read one checkpoint, file or sharded folder, local or in a store, and check it.

    For a sharded checkpoint this is its ``helios.pth``: every unsharded part, and under
    ``sharded_parts`` the keys of those written as shards (read them with
    :py:func:`helios.trainer.checkpoint.sharded.load_full_state`). No model is needed: the
    entries come back as saved. Types of your own in the checkpoint must be registered
    for ``torch.load(weights_only=True)`` first. A checkpoint in an object store (a URL:
    ``s3://...``) is checked against its commit object first
    (:py:mod:`helios.trainer.checkpoint.store`).

    Args:
        path: the checkpoint: a path, or the URL of one in an object store.
        map_location: passed to ``torch.load`` (``"cpu"`` reads GPU tensors anywhere).
        storage_options: for a URL, passed to fsspec (``None``: the store's environment
            variables).

    Returns:
        The checkpoint's entries by key (see :py:mod:`helios.trainer.checkpoint.layout`).

    Raises:
        ValueError: if the file is not a ``torch.save`` archive, a sharded folder is
            incomplete, or a checkpoint in a store does not match its commit object.
        RuntimeError: if it lacks keys every checkpoint has, or a newer helios wrote it.
        pickle.UnpicklingError: if it holds a type not registered for safe loading.
    """
    location = as_location(path)
    if isinstance(location, StorePath):
        return open_folder(location.parent, storage_options).read(location.name, map_location)
    return read_local_checkpoint(location, map_location)


def load_newest_valid_checkpoint(
    folder: CheckpointFolder | pathlib.Path | None, map_location: Any = None
) -> tuple[Location, dict[str, Any]] | None:
    """Load the newest readable checkpoint of a folder (local or in a store).

    A newest checkpoint that is truncated, unreadable or (in a store) does not match its
    commit object is reported with a warning naming it, and the previous one is tried.
    Unregistered types in a readable checkpoint (``pickle.UnpicklingError``) are not
    corruption and are raised.

    Args:
        folder: the folder of the checkpoints (a path: a local folder).
        map_location: passed to ``torch.load``.

    Returns:
        The location and contents of the checkpoint, or ``None`` if none could be read.
    """
    if folder is None:
        return None
    if isinstance(folder, pathlib.Path):
        folder = LocalFolder(folder)
    for name in folder.names():
        path = folder.location(name)
        try:
            contents = folder.read(name, map_location)
        except _CORRUPTION_ERRORS as error:
            message = (
                f"checkpoint {path} could not be read ({type(error).__name__}: {error}); "
                "trying the previous one"
            )
            warnings.warn(message, RuntimeWarning, stacklevel=2)
            if logging.is_root_logger_active():
                logging.get_root_logger().warning(message)
            continue
        return path, contents
    return None


_CORRUPTION_ERRORS = (RuntimeError, EOFError, OSError, ValueError)

__all__ = [
    "LocalFolder",
    "find_best_checkpoint",
    "find_last_checkpoint",
    "list_checkpoints",
    "load_newest_valid_checkpoint",
    "open_folder",
    "read_checkpoint",
    "read_index",
]
