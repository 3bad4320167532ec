"""Checkpoints in an object store (S3, GCS, Azure, ...): a commit protocol with no rename.

An object store has no atomic rename, so a checkpoint ``<name>`` (``.pth`` object or
``.dcp/`` prefix of shards) in a store folder becomes visible in three steps:

1. ``<name>.pending`` is written (an interrupted save is recognised by it);
2. the checkpoint's objects are uploaded under their final names;
3. ``<name>.commit`` is written last: a small JSON manifest naming every object of the
   checkpoint and its size; then ``<name>.pending`` is removed.

Discovery (:py:meth:`StoreFolder.names`) skips a checkpoint with a pending marker and no
commit object, so a save killed at any moment leaves the previous checkpoint the newest one;
the next run (its lock held) deletes what the interrupted save left
(:py:meth:`StoreFolder.prepare`). Reading checks the commit object before anything else:
it must name only objects of its own checkpoint (``<name>`` or ``<name>/<file>``), and each
must exist with exactly the size it gives; a checkpoint that fails is reported and the
previous one is tried, as for a truncated local file. The data itself is read with the safe
loaders (``torch.load(weights_only=True)``, :py:mod:`.shard_index`). A checkpoint
without either marker (copied into the store by another tool) is read like a local one:
its contents are checked.

Deletion (retention) writes the pending marker, removes the commit object, then the data.
A re-save of a name already committed first removes its commit object.

Uploads are retried with exponential backoff on transient errors (the store unreachable, a
connection reset); a store still unreachable after :py:data:`UPLOAD_TRIES` tries fails the
save with an error naming the URL, and the previous checkpoint is untouched. Saves to a
store always run in the background (:py:mod:`.async_save`): training waits only for the
snapshot.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import os
import pathlib
import random
import re
import socket
import time
import zipfile
from collections.abc import Callable, Mapping
from typing import IO, Any, TypeVar

import torch

from helios.core import logging
from helios.core.utils import safe_torch_load

from .folder import CheckpointFolder, check_deletable, check_marker_name
from .io import CheckpointWriteError, check_shard_sizes, validate_checkpoint
from .layout import (
    CONTENTS_NAME,
    INDEX_NAME,
    SHARDED_PARTS_KEY,
    SHARDED_SUFFIX,
    checkpoint_position,
    is_checkpoint_name,
)
from .locations import StorePath

COMMIT_SUFFIX = ".commit"
"""The suffix of a checkpoint's commit object (``<name>.commit``)."""

PENDING_SUFFIX = ".pending"
"""The suffix of the marker of a save (or delete) in progress (``<name>.pending``)."""

COMMIT_FORMAT = "helios-checkpoint-commit"
"""The ``format`` field of a commit object."""

UPLOAD_TRIES = 6
"""How many times an upload is tried before the save fails."""

UPLOAD_BACKOFF = 0.5
"""The wait before the second try, in seconds; it doubles after each try."""

_MAX_COMMIT_BYTES = 1 << 20
_OBJECT_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
_PERMANENT = (PermissionError, FileNotFoundError, IsADirectoryError, NotADirectoryError)

T = TypeVar("T")


def retrying(action: Callable[[], T], what: str) -> T:
    """Run a store operation, trying again with exponential backoff on transient errors.

    Args:
        action: the operation.
        what: the URL it concerns, for messages.

    Returns:
        What the operation returned.

    Raises:
        CheckpointWriteError: if it still fails after :py:data:`UPLOAD_TRIES` tries, or
            fails with a permanent error (permission denied, bucket missing), naming the
            URL and the last error.
    """
    start = time.monotonic()
    delay = UPLOAD_BACKOFF
    for attempt in range(1, UPLOAD_TRIES + 1):
        try:
            return action()
        except _PERMANENT as error:
            raise CheckpointWriteError(
                f"could not write {what}: {type(error).__name__}: {error}. The previous "
                "checkpoint is untouched"
            ) from error
        except Exception as error:
            if attempt == UPLOAD_TRIES:
                elapsed = time.monotonic() - start
                raise CheckpointWriteError(
                    f"could not write {what}: the store failed {attempt} tries over "
                    f"{elapsed:.0f} s (last: {type(error).__name__}: {error}). Check that the "
                    "store is reachable and the credentials are valid; the previous "
                    "checkpoint is untouched"
                ) from error
            logging.get_root_logger().warning(
                f"writing {what} failed ({type(error).__name__}: {error}); trying again in "
                f"{delay:g} s (try {attempt + 1} of {UPLOAD_TRIES})"
            )
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")  # pragma: no cover


class _CountingFile:
    """A write-only file wrapper counting the bytes written."""

    def __init__(self, file: IO[bytes]) -> None:
        self._file = file
        self.size = 0

    def write(self, data: Any) -> int:
        written = self._file.write(data)
        self.size += len(memoryview(data).cast("B"))
        return written if written is not None else 0

    def flush(self) -> None:
        self._file.flush()


def parse_commit(data: bytes, name: str, url: str) -> dict[str, int]:
    """Check a commit object and return the objects it commits with their sizes.

    Args:
        data: the commit object's bytes.
        name: the checkpoint it must commit.
        url: its URL, for messages.

    Returns:
        The committed objects (relative to the folder) and their sizes in bytes.

    Raises:
        ValueError: if it is not a commit object of ``name``, or names an object outside
            ``name`` (``<name>`` itself or ``<name>/<file>``).
    """
    if len(data) > _MAX_COMMIT_BYTES:
        raise ValueError(f"the commit object {url} is too large ({len(data)} bytes)")
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise ValueError(f"the commit object {url} is not JSON: {error}") from error
    if not isinstance(manifest, dict) or manifest.get("format") != COMMIT_FORMAT:
        raise ValueError(f"{url} is not a helios commit object")
    if manifest.get("version") != 1 or manifest.get("checkpoint") != name:
        raise ValueError(
            f"the commit object {url} commits {manifest.get('checkpoint')!r} (version "
            f"{manifest.get('version')!r}), not {name!r}"
        )
    objects = manifest.get("objects")
    if not isinstance(objects, dict) or not objects:
        raise ValueError(f"the commit object {url} names no objects")
    sharded = name.endswith(SHARDED_SUFFIX)
    sizes: dict[str, int] = {}
    for key, size in objects.items():
        inside = (key == name and not sharded) or (
            sharded
            and isinstance(key, str)
            and key.startswith(f"{name}/")
            and _OBJECT_NAME.match(key[len(name) + 1 :]) is not None
            and key[len(name) + 1 :] not in (".", "..")
        )
        if not inside:
            raise ValueError(
                f"the commit object {url} names {key!r}, outside its checkpoint {name!r}: refused"
            )
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError(f"the commit object {url} gives {key!r} the size {size!r}")
        sizes[key] = size
    if sharded and not {f"{name}/{CONTENTS_NAME}", f"{name}/.metadata"} <= set(sizes):
        raise ValueError(f"the commit object {url} lacks {CONTENTS_NAME} or .metadata")
    return sizes


def store_options(url: StorePath, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The fsspec options helios opens a store with (the user's), preparing its client.

    For S3, botocore's retry delays get a random generator of their own
    (:py:func:`isolate_retry_jitter`) before the first request.

    Args:
        url: the store folder's URL.
        options: the user's options (``chkpt_storage_options``), or ``None``.

    Returns:
        The options to pass to fsspec.
    """
    if url.protocol in ("s3", "s3a"):
        isolate_retry_jitter()
    return dict(options or {})


_JITTER = random.Random()


def isolate_retry_jitter() -> None:
    """Make botocore draw the jitter of its retry delays from a generator of its own.

    botocore (under s3fs) retries a failed request after a random delay drawn from Python's
    global ``random`` generator. From an upload in the background, that draw would change
    the random numbers training draws, and the run would no longer match an uninterrupted
    one bit for bit. botocore's legacy retry mode calls ``random.random()`` of the module it
    imported, and its standard mode binds ``random.random`` as a default argument; both are
    pointed at a private generator (once per process; nothing else in botocore changes).
    Without botocore installed, nothing happens.
    """
    try:
        from botocore import retryhandler
        from botocore.retries import standard
    except ImportError:  # pragma: no cover - s3fs brings botocore
        return
    if getattr(retryhandler, "random", None) is random:
        retryhandler.random = _JITTER
    init = standard.ExponentialBackoff.__init__
    defaults = init.__defaults__ or ()
    if any(value == random.random for value in defaults):
        init.__defaults__ = tuple(
            _JITTER.random if value == random.random else value for value in defaults
        )


def _holder_record() -> bytes:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    record = {"pid": os.getpid(), "host": socket.gethostname(), "time": now}
    return json.dumps(record).encode()


class StoreFolder(CheckpointFolder):
    """A checkpoint folder in an object store, through fsspec (see the module docstring).

    Args:
        url: the folder's URL (``s3://bucket/prefix/<save_name>``).
        storage_options: passed to fsspec (``None``: the store's environment variables).
    """

    is_remote = True

    def __init__(self, url: StorePath, storage_options: Mapping[str, Any] | None = None) -> None:
        self.url = StorePath(url)
        self.storage_options = store_options(self.url, storage_options)
        self._fs: Any = None
        self._path = ""
        # Set when the run's lease was taken over: every later save then fails.
        self.claim_error: str | None = None

    # -- the file system -----------------------------------------------------------------

    @property
    def fs(self) -> Any:
        """The fsspec file system (opened on first use)."""
        if self._fs is None:
            from fsspec.core import url_to_fs

            self._fs, self._path = url_to_fs(str(self.url), **self.storage_options)
            self._path = self._path.rstrip("/")
        return self._fs

    @property
    def root(self) -> StorePath:  # noqa: D102
        return self.url

    def location(self, name: str) -> StorePath:  # noqa: D102
        return self.url / name

    def key(self, name: str) -> str:
        """The file system path (no protocol) of an object of the folder."""
        fs = self.fs
        del fs
        return f"{self._path}/{name}"

    def listing(self) -> dict[str, dict[str, Any]]:
        """Return the folder's entries by name (fresh: no cached listing)."""
        fs = self.fs
        fs.invalidate_cache(self._path)
        try:
            entries = fs.ls(self._path, detail=True)
        except FileNotFoundError:
            return {}
        found = {}
        for entry in entries:
            name = str(entry["name"]).rstrip("/").rsplit("/", 1)[-1]
            if name:
                found[name] = entry
        return found

    def put(self, name: str, data: bytes, **kwargs: Any) -> Any:
        """Write one small object (one request)."""
        return self.fs.pipe_file(self.key(name), data, **kwargs)

    def cat(self, name: str) -> bytes:
        """Read one object whole."""
        data: bytes = self.fs.cat_file(self.key(name))
        return data

    def remove(self, name: str, recursive: bool = False) -> None:
        """Remove an object (or a prefix of objects); a missing one is no error."""
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self.key(name), recursive=recursive)

    def remove_all(self) -> None:
        """Remove the folder and everything in it."""
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self._path, recursive=True)

    def _check_claim(self) -> None:
        if self.claim_error is not None:
            raise CheckpointWriteError(self.claim_error)

    # -- discovery -----------------------------------------------------------------------

    def prepare(self) -> None:
        """Remove what interrupted saves and deletes left (the lock's holder only)."""
        listing = self.listing()
        for entry in sorted(listing):
            if entry.endswith(PENDING_SUFFIX):
                name = entry[: -len(PENDING_SUFFIX)]
                if not is_checkpoint_name(name):
                    continue
                logging.get_root_logger().info(
                    f"Removing the interrupted save of {self.location(name)}"
                )
                self.remove(name + COMMIT_SUFFIX)
                self.remove(name, recursive=name.endswith(SHARDED_SUFFIX))
                self.remove(entry)
            elif entry.endswith(COMMIT_SUFFIX):
                name = entry[: -len(COMMIT_SUFFIX)]
                if name not in listing and is_checkpoint_name(name):
                    self.remove(entry)

    def names(self) -> list[str]:  # noqa: D102
        listing = self.listing()
        found = []
        for name, entry in listing.items():
            position = checkpoint_position(pathlib.PurePosixPath(name))
            if position is None or not is_checkpoint_name(name):
                continue
            if (entry.get("type") == "directory") != name.endswith(SHARDED_SUFFIX):
                continue
            if name + PENDING_SUFFIX in listing and name + COMMIT_SUFFIX not in listing:
                continue  # an interrupted save: never visible
            found.append((position, name))
        found.sort(reverse=True)
        return [name for _, name in found]

    def is_sharded(self, name: str) -> bool:  # noqa: D102
        return name.endswith(SHARDED_SUFFIX)

    def exists(self, name: str) -> bool:  # noqa: D102
        return name in self.names()

    def _sizes(self, name: str, listing: Mapping[str, Mapping[str, Any]]) -> dict[str, int]:
        """The objects of checkpoint ``name`` that the store holds, with their sizes."""
        if not self.is_sharded(name):
            entry = listing.get(name)
            return {} if entry is None else {name: int(entry.get("size") or 0)}
        prefix = self.key(name)
        self.fs.invalidate_cache(prefix)
        found = self.fs.find(prefix, detail=True)
        sizes = {}
        for path, entry in found.items():
            relative = str(path)[len(prefix) :].lstrip("/")
            sizes[f"{name}/{relative}"] = int(entry.get("size") or 0)
        return sizes

    def committed_sizes(self, name: str) -> dict[str, int] | None:
        """Check checkpoint ``name`` against its commit object; its objects' sizes.

        Returns:
            The sizes of the checkpoint's objects in the store, or ``None`` for a
            checkpoint with no commit object (copied into the store by another tool).

        Raises:
            ValueError: if the checkpoint is missing, was never committed, or does not match
                its commit object (an object missing, truncated or outside it).
        """
        listing = self.listing()
        url = self.location(name)
        if name not in listing:
            raise ValueError(f"{url} is missing")
        sizes = self._sizes(name, listing)
        if name + COMMIT_SUFFIX not in listing:
            if name + PENDING_SUFFIX in listing:
                raise ValueError(f"{url} is an interrupted save (it was never committed)")
            return None
        committed = parse_commit(
            self.cat(name + COMMIT_SUFFIX), name, str(self.location(name + COMMIT_SUFFIX))
        )
        for key, size in committed.items():
            actual = sizes.get(key)
            if actual != size:
                what = "missing" if actual is None else f"{actual} bytes, not {size}"
                raise ValueError(f"{self.url / key} does not match its commit object ({what})")
        return sizes

    # -- reading -------------------------------------------------------------------------

    def read(self, name: str, map_location: Any = None) -> dict[str, Any]:  # noqa: D102
        from .io import register_trainer_types_for_safe_load

        register_trainer_types_for_safe_load()
        url = self.location(name)
        sizes = self.committed_sizes(name)
        if self.is_sharded(name):
            if sizes is None:
                sizes = self._sizes(name, self.listing())
            metadata = self.read_metadata(name)
            shard_sizes = {key[len(name) + 1 :]: size for key, size in sizes.items()}
            check_shard_sizes(metadata, shard_sizes, url)
            if CONTENTS_NAME not in shard_sizes:
                raise ValueError(f"{url / CONTENTS_NAME} is missing")
            data = self.cat(f"{name}/{CONTENTS_NAME}")
            contents = _load_archive(data, url / CONTENTS_NAME, map_location)
            if not isinstance(contents, dict) or SHARDED_PARTS_KEY not in contents:
                raise ValueError(f"{url / CONTENTS_NAME} lists no sharded parts")
        else:
            data = self.cat(name)
            if sizes is not None and len(data) != sizes[name]:
                raise ValueError(f"{url} changed while it was read")
            contents = _load_archive(data, url, map_location)
        validate_checkpoint(contents, url)
        return contents

    def read_metadata(self, name: str) -> Any:  # noqa: D102
        from .shard_index import METADATA_NAME, load_shard_index

        data = self.cat(f"{name}/{METADATA_NAME}")
        return load_shard_index(io.BytesIO(data), self.location(name) / METADATA_NAME)

    def shard_reader(self, name: str) -> Any:  # noqa: D102
        from .shard_index import shard_reader

        return shard_reader(str(self.location(name)), self.storage_options)

    def read_index(self) -> dict[str, Any] | None:  # noqa: D102
        try:
            data = json.loads(self.cat(INDEX_NAME).decode("utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    # -- writing -------------------------------------------------------------------------

    def _begin(self, name: str) -> None:
        """Hide a committed checkpoint of the same name; mark the save as in progress."""
        self._check_claim()
        self.remove(name + COMMIT_SUFFIX)
        self.put(name + PENDING_SUFFIX, _holder_record())

    def _commit(self, name: str, sizes: Mapping[str, int]) -> None:
        """Write the commit object naming ``sizes``, then remove the pending marker."""
        self._check_claim()
        import helios

        manifest = {
            "format": COMMIT_FORMAT,
            "version": 1,
            "checkpoint": name,
            "objects": dict(sizes),
            "helios": helios.__version__,
        }
        self.put(name + COMMIT_SUFFIX, json.dumps(manifest, indent=1).encode())
        self.remove(name + PENDING_SUFFIX)

    def _upload_torch(self, contents: Any, name: str) -> int:
        """Stream ``torch.save(contents)`` into object ``name``; return its size."""
        with self.fs.open(self.key(name), "wb") as file:
            counting = _CountingFile(file)
            torch.save(contents, counting)  # type: ignore[arg-type]
        return counting.size

    def write(self, contents: dict[str, Any], name: str) -> None:  # noqa: D102
        def attempt() -> None:
            self._begin(name)
            size = self._upload_torch(contents, name)
            self._commit(name, {name: size})

        retrying(attempt, f"checkpoint {self.location(name)}")

    def begin_sharded(self, name: str) -> None:  # noqa: D102
        def attempt() -> None:
            self._begin(name)
            self.remove(name, recursive=True)

        retrying(attempt, f"checkpoint {self.location(name)}")

    def shard_writer(self, name: str) -> Any:  # noqa: D102
        from torch.distributed.checkpoint._fsspec_filesystem import FsspecWriter

        return FsspecWriter(str(self.location(name)), sync_files=False, **self.storage_options)

    def commit_sharded(self, contents: dict[str, Any], name: str) -> None:  # noqa: D102
        def attempt() -> None:
            self._upload_torch(contents, f"{name}/{CONTENTS_NAME}")
            sizes = self._sizes(name, self.listing())
            sizes = {k: v for k, v in sizes.items() if not k.endswith(".tmp")}
            self._commit(name, sizes)

        retrying(attempt, f"checkpoint {self.location(name)}")

    def delete(self, name: str) -> None:  # noqa: D102
        check_deletable(name)
        self.put(name + PENDING_SUFFIX, _holder_record())
        self.remove(name + COMMIT_SUFFIX)
        self.remove(name, recursive=self.is_sharded(name))
        self.remove(name + PENDING_SUFFIX)

    def write_marker(self, name: str, text: str) -> None:  # noqa: D102
        check_marker_name(name)
        try:
            self.put(name, text.encode("utf-8"))
        except OSError:
            raise
        except Exception as error:  # a store's client error: report it as the OSError it is
            raise OSError(f"could not write {self.location(name)}: {error}") from error

    def read_marker(self, name: str) -> str | None:  # noqa: D102
        check_marker_name(name)
        try:
            return self.cat(name).decode("utf-8")
        except Exception:  # missing, denied, or another store's: not seen
            return None

    def delete_marker(self, name: str) -> None:  # noqa: D102
        check_marker_name(name)
        self.remove(name)

    def write_index(self, data: Mapping[str, Any]) -> None:  # noqa: D102
        text = json.dumps(dict(data), indent=2).encode("utf-8")
        retrying(lambda: self.put(INDEX_NAME, text), str(self.location(INDEX_NAME)))

    def lock(self) -> Any:  # noqa: D102
        from .store_lock import StoreLock

        return StoreLock(self)


def _load_archive(data: bytes, url: StorePath, map_location: Any) -> Any:
    buffer = io.BytesIO(data)
    if not zipfile.is_zipfile(buffer):
        raise ValueError(f"{url} is not a torch.save archive (truncated or overwritten)")
    buffer.seek(0)
    return safe_torch_load(buffer, map_location=map_location)


__all__ = [
    "COMMIT_FORMAT",
    "COMMIT_SUFFIX",
    "PENDING_SUFFIX",
    "UPLOAD_BACKOFF",
    "UPLOAD_TRIES",
    "StoreFolder",
    "isolate_retry_jitter",
    "parse_commit",
    "retrying",
    "store_options",
]
