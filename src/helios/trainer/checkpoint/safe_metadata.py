"""Reading Distributed Checkpoint's shard index (``.metadata``) without running its code.

Distributed Checkpoint pickles its index; ``pickle.load`` of a file from a store (or a
folder someone else wrote) would run whatever the file asks for. :py:func:`load_metadata`
unpickles it with an unpickler that builds only the index's own types (from
``torch.distributed.checkpoint``), ``torch.Size``, dtypes, layouts and paths, and refuses
anything else before it can run. :py:func:`safe_reader` is a storage reader (local folder
or fsspec URL) that reads its index that way.
"""

from __future__ import annotations

import io
import pathlib
import pickle
from collections.abc import Mapping
from typing import Any

import torch

_INDEX_MODULES = ("torch.distributed.checkpoint.metadata",)
_ALLOWED = {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("pathlib", "PosixPath"),
    ("pathlib", "PurePosixPath"),
    ("collections", "OrderedDict"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
}


class RefusedIndexError(pickle.UnpicklingError, ValueError):
    """A shard index that refers to a type an index does not hold (damaged or hostile).

    A ``ValueError`` too: a run resuming skips such a checkpoint as it skips a damaged one.
    """


class _IndexUnpickler(pickle.Unpickler):
    """Builds only the types of a Distributed Checkpoint index."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED or (module in _INDEX_MODULES and "." not in name):
            found = super().find_class(module, name)
            if module in _INDEX_MODULES and getattr(found, "__module__", None) != module:
                raise pickle.UnpicklingError(f"{module}.{name} is not a shard index type")
            return found
        if module == "torch" and "." not in name:
            found = getattr(torch, name, None)
            if isinstance(found, torch.dtype):
                return found
        raise RefusedIndexError(
            f"the shard index refers to {module}.{name}, which is not a type of a Distributed "
            "Checkpoint index: refused (the file is damaged or was not written by helios)"
        )


def load_metadata(data: bytes) -> Any:
    """Unpickle a shard index, refusing any type an index does not hold.

    Args:
        data: the bytes of the ``.metadata`` file.

    Returns:
        The ``torch.distributed.checkpoint.metadata.Metadata``.

    Raises:
        pickle.UnpicklingError: if the file refers to another type, or is not an index.
    """
    from torch.distributed.checkpoint.metadata import Metadata

    try:
        metadata = _IndexUnpickler(io.BytesIO(data)).load()
    except RefusedIndexError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as error:
        raise RefusedIndexError(f"the shard index is unreadable: {error}") from error
    except (IndexError, KeyError) as error:
        raise RefusedIndexError(f"the shard index is unreadable: {error}") from error
    if not isinstance(metadata, Metadata):
        raise RefusedIndexError(
            f"the shard index holds a {type(metadata).__name__}, not a Metadata"
        )
    return metadata


def safe_reader(path: str | pathlib.Path, storage_options: Mapping[str, Any] | None = None) -> Any:
    """Return a Distributed Checkpoint storage reader that reads its index safely.

    Args:
        path: the checkpoint folder: a local path, or a URL (read through fsspec).
        storage_options: for a URL, passed to fsspec.

    Returns:
        The reader (its tensors are read with ``weights_only=True`` by torch itself).
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader

    base: Any = dcp.FileSystemReader if isinstance(path, pathlib.Path) else FsspecReader

    class SafeIndexReader(base):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            from torch.distributed.checkpoint.metadata import StorageMeta

            index = self._get_metadata_path(kwargs.get("rank"))
            with self.fs.create_stream(index, "rb") as stream:
                metadata = load_metadata(stream.read())
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    if isinstance(path, pathlib.Path):
        return SafeIndexReader(path)
    return SafeIndexReader(str(path), **dict(storage_options or {}))


__all__ = ["RefusedIndexError", "load_metadata", "safe_reader"]
