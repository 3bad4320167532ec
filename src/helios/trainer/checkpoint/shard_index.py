"""The shard index of a sharded checkpoint (``.metadata``), read without running code.

Distributed Checkpoint writes the index of a checkpoint's shards as a pickle and reads it
back with plain ``pickle.load``, which runs whatever callable the file names: a ``.dcp``
folder planted in a checkpoint folder would run code as soon as helios looked at it. Every
path in helios that reads an index goes through :py:func:`load_shard_index` instead, whose
unpickler resolves only the types an index is made of (Distributed Checkpoint's metadata
classes, ``torch.Size``, dtypes, layouts, memory formats, paths) and refuses any other
global with :py:class:`ShardIndexError`, before anything is called.

:py:func:`shard_reader` is the storage reader handed to ``torch.distributed.checkpoint.load``:
Distributed Checkpoint's own reader (of a local folder, or of a URL through fsspec) with the
index read this way. A reader for another
storage (a subclass of ``FileSystemReader``) gets the same reading by mixing in
:py:class:`SafeIndexReading`.
"""

from __future__ import annotations

import importlib
import io
import pathlib
import pickle
from collections.abc import Mapping
from typing import IO, Any

import torch

METADATA_NAME = ".metadata"
"""The file name of the shard index in a sharded checkpoint's folder."""

_INDEX_TYPES = {
    "torch.distributed.checkpoint.metadata": (
        "Metadata",
        "MetadataIndex",
        "StorageMeta",
        "TensorStorageMetadata",
        "BytesStorageMetadata",
        "ChunkStorageMetadata",
        "TensorProperties",
        "_MEM_FORMAT_ENCODING",
    ),
    "torch.distributed.checkpoint.filesystem": ("_StorageInfo",),
    "torch.serialization": ("_get_layout",),
    "torch": ("Size", "device", "dtype", "layout", "memory_format"),
    "pathlib": ("Path", "PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath"),
    "collections": ("OrderedDict",),
}


class ShardIndexError(pickle.UnpicklingError):
    """A shard index that names something other than Distributed Checkpoint's types.

    Such a file was not written by Distributed Checkpoint (or was tampered with); nothing it
    names was called.
    """


class _IndexUnpickler(pickle.Unpickler):
    """Resolves only the globals a shard index is made of (see the module docstring)."""

    def __init__(self, file: IO[bytes], source: str) -> None:
        super().__init__(file)
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        if name in _INDEX_TYPES.get(module, ()) or (module == "torch" and _is_dtype(name)):
            return getattr(importlib.import_module(module), name)
        raise ShardIndexError(
            f"the shard index {self._source} names {module}.{name}, which is not a type of "
            "Distributed Checkpoint's index: it was not written by helios (or was altered), "
            "and it was not loaded. Move the checkpoint folder out of the way"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise ShardIndexError(f"the shard index {self._source} holds a persistent reference")


def _is_dtype(name: str) -> bool:
    return isinstance(getattr(torch, name, None), torch.dtype)


def load_shard_index(file: IO[bytes], source: str | pathlib.Path = "<stream>") -> Any:
    """Unpickle a shard index, resolving only the types an index is made of.

    Args:
        file: the open index file (binary).
        source: where it comes from, for messages.

    Returns:
        The index (``torch.distributed.checkpoint.metadata.Metadata``).

    Raises:
        ShardIndexError: if the file names any other global, or is not an index.
    """
    import torch.distributed.checkpoint.filesystem  # noqa: F401 - registers the types
    from torch.distributed.checkpoint.metadata import Metadata

    index = _IndexUnpickler(file, str(source)).load()
    if not isinstance(index, Metadata):
        raise ShardIndexError(
            f"the shard index {source} holds a {type(index).__name__}, not an index"
        )
    return index


def read_shard_index(path: pathlib.Path) -> Any:
    """Read the shard index of a sharded checkpoint folder (see :py:func:`load_shard_index`).

    Args:
        path: the checkpoint folder.

    Returns:
        The index.

    Raises:
        ShardIndexError: if the index names a global other than the index's types.
        OSError: if it cannot be read.
    """
    with open(path / METADATA_NAME, "rb") as file:
        return _with_storage_meta(load_shard_index(io.BytesIO(file.read()), path / METADATA_NAME))


def _with_storage_meta(index: Any) -> Any:
    from torch.distributed.checkpoint.metadata import StorageMeta

    if getattr(index, "storage_meta", None) is None:
        index.storage_meta = StorageMeta()
    return index


class SafeIndexReading:
    """Mixed into a ``FileSystemReader`` (or a subclass): its index is read safely."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
        """Read the index with :py:func:`load_shard_index` (as Distributed Checkpoint would).

        Args:
            *args: unused (Distributed Checkpoint's signature).
            **kwargs: ``rank``: the rank whose index to read, when each wrote one.

        Returns:
            The index, with this reader's load id.
        """
        reader: Any = self
        path = reader._get_metadata_path(kwargs.get("rank"))
        with reader.fs.create_stream(path, "rb") as stream:
            index = _with_storage_meta(load_shard_index(io.BytesIO(stream.read()), path))
        index.storage_meta.load_id = reader.load_id
        return index


def shard_reader(path: str | pathlib.Path, storage_options: Mapping[str, Any] | None = None) -> Any:
    """Return Distributed Checkpoint's reader of a checkpoint folder, its index read safely.

    Args:
        path: the checkpoint folder: a local path, or a URL (``s3://...``, ``file://...``)
            read through fsspec.
        storage_options: for a URL, the options of its fsspec file system.

    Returns:
        A ``torch.distributed.checkpoint.FileSystemReader`` (local) or ``FsspecReader`` (URL)
        whose :py:meth:`~SafeIndexReading.read_metadata` is :py:class:`SafeIndexReading`'s.
    """
    import torch.distributed.checkpoint as dcp

    if isinstance(path, pathlib.Path):

        class SafeFileSystemReader(SafeIndexReading, dcp.FileSystemReader):
            pass

        return SafeFileSystemReader(path)

    from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader

    class SafeFsspecReader(SafeIndexReading, FsspecReader):
        pass

    return SafeFsspecReader(path, **dict(storage_options or {}))


__all__ = [
    "METADATA_NAME",
    "SafeIndexReading",
    "ShardIndexError",
    "load_shard_index",
    "read_shard_index",
    "shard_reader",
]
