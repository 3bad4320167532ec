"""Where a run's checkpoints live: a folder on this machine, or a folder in an object store.

Every checkpoint operation goes through a :py:class:`CheckpointFolder`, one per run folder
(``<chkpt_root>/<save_name>``):

* :py:class:`LocalFolder`, for a path on this machine: a checkpoint is written to a
  hidden temporary file (or folder), synced and renamed to its name (:py:mod:`.io`); the
  run's claim is an ``flock`` (:py:mod:`helios.trainer.run_folder`).
* :py:class:`~helios.trainer.checkpoint.store.StoreFolder`, for a URL (``s3://``, ``gs://``,
  ``az://``, ``memory://``, any fsspec protocol): an object store has no rename, so a
  checkpoint becomes visible through a commit object written after its data
  (:py:mod:`.store`); the claim is a lease (:py:mod:`.store_lock`).

:py:func:`open_folder` picks one from what the user gave. ``file://`` URLs are local
folders. A checkpoint in a store is named by a :py:class:`StorePath`, a ``str`` holding its
URL with the path attributes the checkpoint code reads (``name``, ``suffix``, ``parent``).
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from helios.trainer.run_folder import RunFolderLock

    from .store import StoreFolder

_URL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.\-]*)://")


class StorePath(str):
    """The URL of a checkpoint (or folder) in an object store: a ``str`` with path parts.

    ``StorePath("s3://bucket/runs/net_epoch_2_iter_40.pth").name`` is
    ``"net_epoch_2_iter_40.pth"``; ``/`` joins a name to a folder's URL.
    """

    __slots__ = ()

    def __new__(cls, url: str) -> StorePath:  # noqa: D102
        return super().__new__(cls, url.rstrip("/") if not url.endswith("://") else url)

    @property
    def protocol(self) -> str:
        """The URL's scheme (``"s3"``, ``"gs"``, ...)."""
        match = _URL.match(self)
        return match.group(1).lower() if match else ""

    @property
    def name(self) -> str:
        """The last component of the URL."""
        return self.rsplit("/", 1)[-1]

    @property
    def parent(self) -> StorePath:
        """The URL of the folder holding this one."""
        return StorePath(self.rsplit("/", 1)[0])

    @property
    def suffix(self) -> str:
        """The name's extension (``".pth"``), or ``""``."""
        return pathlib.PurePosixPath(self.name).suffix

    @property
    def stem(self) -> str:
        """The name without its extension."""
        return pathlib.PurePosixPath(self.name).stem

    def with_suffix(self, suffix: str) -> StorePath:
        """Return the URL with another extension."""
        return self.parent / pathlib.PurePosixPath(self.name).with_suffix(suffix).name

    def __truediv__(self, name: str) -> StorePath:
        return StorePath(f"{self}/{name}")

    def __repr__(self) -> str:
        return f"StorePath({str(self)!r})"


Location = pathlib.Path | StorePath
"""Where a checkpoint or a checkpoint folder is: a local path or a store URL."""


def url_protocol(value: object) -> str | None:
    """Return the scheme of a URL given as a string (``None`` for anything else).

    Args:
        value: what the user gave.

    Returns:
        The scheme, lower case, or ``None`` if ``value`` is not a ``<scheme>://`` string.
    """
    if isinstance(value, StorePath):
        return value.protocol
    if not isinstance(value, str):
        return None
    match = _URL.match(value)
    return match.group(1).lower() if match else None


def as_location(value: str | os.PathLike[str]) -> Location:
    """Turn what a user gave (a path, a ``str`` path or URL) into a :py:data:`Location`.

    ``file://`` URLs become local paths.

    Args:
        value: the path or URL.

    Returns:
        A :py:class:`pathlib.Path` or a :py:class:`StorePath`.
    """
    protocol = url_protocol(value)
    if protocol is None:
        return pathlib.Path(value)
    text = str(value)
    if protocol in ("file", "local"):
        return pathlib.Path(text.split("://", 1)[1])
    return StorePath(text)


def check_protocol(location: StorePath, name: str) -> None:
    """Check that fsspec (and the store's own package) can open ``location``.

    Args:
        location: the URL.
        name: the argument's name, for the message.

    Raises:
        ImportError: naming the package that the protocol needs.
        ValueError: for a protocol fsspec does not know.
    """
    try:
        import fsspec
    except ImportError as error:
        raise ImportError(
            f"{name}={str(location)!r} is a URL: checkpoints in an object store need fsspec "
            "and the store's own package; install them with pip install "
            "'helios-blaze[s3]' (S3) or 'helios-blaze[gcs]' / 'helios-blaze[azure]'"
        ) from error
    try:
        fsspec.get_filesystem_class(location.protocol)
    except ValueError as error:
        raise ValueError(
            f"invalid {name}={str(location)!r}: fsspec knows no protocol "
            f"{location.protocol!r} ({error})"
        ) from error
    except ImportError as error:
        raise ImportError(
            f"{name}={str(location)!r} needs the fsspec package of its store: {error}"
        ) from error


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

    def exists(self, name: str) -> bool:
        """Whether checkpoint ``name`` is in the folder and visible."""
        return name in self.names()

    def lock(self) -> Any:
        """Return the claim of one run on the folder (``acquire``/``release``)."""
        raise NotImplementedError


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
        from .io import prepare_folder

        prepare_folder(self.path)

    def names(self) -> list[str]:  # noqa: D102
        from .layout import list_local_checkpoints

        return [path.name for path in list_local_checkpoints(self.path)]

    def is_sharded(self, name: str) -> bool:  # noqa: D102
        from .layout import is_sharded_checkpoint

        return is_sharded_checkpoint(self.path / name)

    def read(self, name: str, map_location: Any = None) -> dict[str, Any]:  # noqa: D102
        from .io import read_local_checkpoint

        return read_local_checkpoint(self.path / name, map_location)

    def write(self, contents: dict[str, Any], name: str) -> None:  # noqa: D102
        from .io import save_atomically

        save_atomically(contents, self.path / name)

    def begin_sharded(self, name: str) -> None:  # noqa: D102
        from .io import prepare_temporary_folder

        prepare_temporary_folder(self.path / name)

    def shard_writer(self, name: str) -> Any:  # noqa: D102
        import torch.distributed.checkpoint as dcp

        from .layout import temporary_folder

        return dcp.FileSystemWriter(temporary_folder(self.path / name), sync_files=True)

    def commit_sharded(self, contents: dict[str, Any], name: str) -> None:  # noqa: D102
        from .io import commit_sharded

        commit_sharded(contents, self.path / name)

    def shard_reader(self, name: str) -> Any:  # noqa: D102
        from .safe_metadata import safe_reader

        return safe_reader(self.path / name)

    def read_metadata(self, name: str) -> Any:  # noqa: D102
        from .io import read_metadata

        return read_metadata(self.path / name)

    def delete(self, name: str) -> None:  # noqa: D102
        path = self.path / name
        if path.is_dir() and not path.is_symlink():  # a sharded checkpoint
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)

    def write_index(self, data: Mapping[str, Any]) -> None:  # noqa: D102
        from .layout import INDEX_NAME
        from .retention import write_json_atomically

        write_json_atomically(dict(data), self.path / INDEX_NAME)

    def read_index(self) -> dict[str, Any] | None:  # noqa: D102
        import json

        from .layout import INDEX_NAME

        try:
            data = json.loads((self.path / INDEX_NAME).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def exists(self, name: str) -> bool:  # noqa: D102
        return (self.path / name).exists()

    def lock(self) -> RunFolderLock:  # noqa: D102
        from helios.trainer.run_folder import RunFolderLock

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
    if isinstance(root, LocalFolder):
        return root
    from .store import StoreFolder

    if isinstance(root, StoreFolder):
        return root
    location = as_location(root)  # type: ignore[arg-type]
    if isinstance(location, StorePath):
        return StoreFolder(location, storage_options)
    return LocalFolder(location)


__all__ = [
    "CheckpointFolder",
    "LocalFolder",
    "Location",
    "StorePath",
    "as_location",
    "check_protocol",
    "open_folder",
    "url_protocol",
]
