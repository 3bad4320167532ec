"""Reading and writing checkpoints: atomic writes and commits, validated safe loads.

This is the only module that writes or reads checkpoint files; what goes into them is
decided by the parts (:py:mod:`helios.trainer.checkpoint.parts`). Its interface is narrow:

* :py:func:`save_atomically` writes a one-file checkpoint; :py:func:`prepare_temporary_folder`
  and :py:func:`commit_sharded` bracket the writing of a sharded one (every rank writes its
  shards in between, :py:func:`helios.trainer.checkpoint.sharded.write_shards`). A crash at
  any moment leaves the previous checkpoint the newest complete one.
* :py:func:`prepare_folder` creates a run's folder and removes what interrupted saves left.
* :py:func:`~helios.trainer.checkpoint.storage.read_checkpoint` reads one checkpoint and checks it;
  :py:func:`load_newest_valid_checkpoint` finds the newest readable one of a folder.

Every load uses ``torch.load(weights_only=True)``: a checkpoint is data, never code. The
types a checkpoint may hold beyond tensors and builtins are registered first
(:py:func:`register_trainer_types_for_safe_load`, and the model's own with
:py:meth:`helios.model.Model.types_for_safe_load`).
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
import shutil
import zipfile
from collections.abc import Mapping
from typing import IO, TYPE_CHECKING, Any

import torch
from packaging import version as _version

from helios.core.files import TEMPORARY_SUFFIX, fsync_directory, write_atomically
from helios.core.training_state import TrainingState
from helios.core.utils import safe_torch_load

from .layout import (
    CHECKPOINT_SUFFIX,
    CONTENTS_NAME,
    INDEX_NAME,
    REQUIRED_KEYS,
    SHARDED_PARTS_KEY,
    SHARDED_SUFFIX,
    is_sharded_checkpoint,
    temporary_folder,
)
from .shard_index import ShardIndexError, read_shard_index

if TYPE_CHECKING:
    from .locations import Location


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written; the message names the file and the cause.

    Args:
        message: the message.
        path: the checkpoint path.
    """

    def __init__(self, message: str, path: object = None) -> None:
        super().__init__(message)
        self.path = path


def get_trainer_safe_types_for_load() -> list[type]:
    """Return the types, beyond tensors and builtins, that a checkpoint may contain.

    Returns:
        The list of types to register for ``torch.load(weights_only=True)``.
    """
    return [TrainingState, pathlib.PosixPath, pathlib.WindowsPath]


def register_trainer_types_for_safe_load() -> None:
    """Register the trainer's checkpoint types for ``torch.load(weights_only=True)``."""
    torch.serialization.add_safe_globals(list(get_trainer_safe_types_for_load()))


# -- writing -------------------------------------------------------------------------------


class _RecordingFile:
    """A file wrapper that keeps the first OS error of a write.

    ``torch.save`` turns a failed ``write`` into its own internal error ("enforce fail ...
    unexpected pos"); the recorded error is the one to report.
    """

    def __init__(self, file: Any) -> None:
        self._file = file
        self.error: OSError | None = None

    def _recorded(self, operation: Any, *args: Any) -> Any:
        try:
            return operation(*args)
        except OSError as error:
            if self.error is None:
                self.error = error
            raise

    def write(self, data: Any) -> int:
        written: int = self._recorded(self._file.write, data)
        return written

    def flush(self) -> None:
        self._recorded(self._file.flush)


def save_atomically(contents: dict[str, Any], path: pathlib.Path) -> None:
    """Write a checkpoint so that a crash at any moment leaves no partial file behind.

    The data goes to a temporary file in the same folder, which is flushed, synced to disk
    and then renamed over the target: the target is either the old file or the new one
    (:py:func:`helios.core.files.write_atomically`).

    Args:
        contents: the checkpoint contents.
        path: the final path.

    Raises:
        CheckpointWriteError: if the file cannot be written (full disk, file-size limit,
            read-only folder, ...), naming the path and the operating system's error.
    """
    recording: _RecordingFile | None = None

    def write(file: IO[bytes]) -> None:
        nonlocal recording
        recording = _RecordingFile(file)
        torch.save(contents, recording)  # type: ignore[arg-type]

    try:
        write_atomically(path, write)
    except (OSError, RuntimeError) as error:
        cause: BaseException = error
        if recording is not None and recording.error is not None:
            cause = recording.error
        raise CheckpointWriteError(
            f"could not write checkpoint {path}: {_describe_os_error(cause)}", path
        ) from cause


def _describe_os_error(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        name = errno.errorcode.get(error.errno or 0, str(error.errno))
        where = f" ({error.filename})" if error.filename else ""
        return f"[{name}] {error.strerror}{where}"
    return f"{type(error).__name__}: {error}"


def write_json_atomically(
    data: Any, path: pathlib.Path, indent: int = 2, sort_keys: bool = False
) -> None:
    """Write JSON through a synced temporary file renamed over ``path``.

    Args:
        data: the JSON-serialisable data.
        path: the final path.
        indent: passed to ``json.dump``.
        sort_keys: passed to ``json.dump``.
    """
    text = json.dumps(data, indent=indent, sort_keys=sort_keys).encode("utf-8")
    write_atomically(path, lambda file: file.write(text))


def prepare_folder(root: pathlib.Path) -> None:
    """Create a run's checkpoint folder and delete what interrupted saves left in it.

    Args:
        root: the checkpoint folder.
    """
    root.mkdir(parents=True, exist_ok=True)
    remove_temporary_files(root)


def remove_temporary_files(root: pathlib.Path | None) -> None:
    """Delete the temporary files that saves interrupted by a crash left in a folder.

    Args:
        root: the checkpoint folder.
    """
    if root is None or not root.is_dir():
        return
    for pattern in (
        f".*{CHECKPOINT_SUFFIX}.*{TEMPORARY_SUFFIX}",
        f".{INDEX_NAME}.*.tmp",
        f".*{SHARDED_SUFFIX}*{TEMPORARY_SUFFIX}",
    ):
        for path in root.glob(pattern):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def prepare_temporary_folder(path: pathlib.Path) -> None:
    """Empty the temporary folder of sharded checkpoint ``path`` (before any rank writes)."""
    folder = temporary_folder(path)
    if folder.exists():
        shutil.rmtree(folder)


def commit_sharded(contents: dict[str, Any], path: pathlib.Path) -> None:
    """Add ``helios.pth`` to the written shards and give the folder its final name (rank 0).

    Call it once every rank has written its shards. A folder already at ``path`` (a rerun
    saving the same position) is replaced.

    Args:
        contents: the unsharded parts, with ``sharded_parts`` naming the sharded ones.
        path: the final path of the checkpoint folder.

    Raises:
        CheckpointWriteError: if a file cannot be written, naming it.
    """
    folder = temporary_folder(path)
    save_atomically(contents, folder / CONTENTS_NAME)
    fsync_directory(folder)
    if path.exists():
        previous = path.parent / f".{path.name}.previous{TEMPORARY_SUFFIX}"
        os.replace(path, previous)
        os.replace(folder, path)
        shutil.rmtree(previous, ignore_errors=True)
    else:
        os.replace(folder, path)
    fsync_directory(path.parent)


# -- reading -------------------------------------------------------------------------------


def read_metadata(path: pathlib.Path) -> Any:
    """Read the shard index (Distributed Checkpoint metadata) of a sharded checkpoint.

    The index is unpickled by :py:func:`~helios.trainer.checkpoint.shard_index.load_shard_index`,
    which resolves only the index's own types: a planted ``.metadata`` runs nothing.

    Raises:
        helios.trainer.checkpoint.shard_index.ShardIndexError: if the index names any
            other global.
    """
    return read_shard_index(path)


def check_shard_sizes(metadata: Any, sizes: Mapping[str, int], where: Any) -> None:
    """Check that every shard file the index names is there and long enough.

    Args:
        metadata: the shard index.
        sizes: the files of the checkpoint folder by relative name, with their sizes.
        where: the checkpoint, for messages.

    Raises:
        ValueError: naming the first missing or truncated shard file.
    """
    needed: dict[str, int] = {}
    for info in metadata.storage_data.values():
        end = info.offset + info.length
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), end)
    for name, size in needed.items():
        actual = sizes.get(name, -1)
        if actual < size:
            what = "missing" if actual < 0 else f"truncated ({actual} of {size} bytes)"
            raise ValueError(f"shard file {name} of {where} is {what}")


def read_sharded_contents(path: pathlib.Path, map_location: Any = None) -> dict[str, Any]:
    """Read the unsharded parts of a sharded checkpoint, after checking it is complete.

    Complete means: ``helios.pth`` and the shards' index are readable, and every shard file
    the index names exists and is long enough for the data it indexes.

    Args:
        path: the checkpoint folder.
        map_location: passed to ``torch.load``.

    Returns:
        The contents of ``helios.pth``.

    Raises:
        ValueError: if a file is missing or truncated, naming it.
    """
    contents_file = path / CONTENTS_NAME
    if not contents_file.is_file():
        raise ValueError(f"{contents_file} is missing")
    try:
        metadata = read_metadata(path)
    except ShardIndexError:
        raise  # not corruption: a file that names code; it is refused, not skipped
    except Exception as error:
        raise ValueError(f"the shard index {path / '.metadata'} is unreadable: {error}") from error
    sizes = {
        shard.name: shard.stat().st_size
        for shard in path.iterdir()
        if shard.is_file() and not shard.is_symlink()
    }
    check_shard_sizes(metadata, sizes, path)
    contents = safe_torch_load(contents_file, map_location=map_location)
    if not isinstance(contents, dict) or SHARDED_PARTS_KEY not in contents:
        raise ValueError(f"{contents_file} lists no sharded parts")
    return contents


def validate_checkpoint(contents: Any, path: Location) -> None:
    """Check that a loaded object is a checkpoint this version of helios can resume.

    Args:
        contents: the loaded object.
        path: where it was loaded from, for the message.

    Raises:
        RuntimeError: naming the missing keys or the newer version.
    """
    import helios

    if not isinstance(contents, dict):
        raise RuntimeError(
            f"the checkpoint at {path} is not a valid helios checkpoint: expected a "
            f"dict, found {type(contents).__name__}"
        )
    present = {*contents, *contents.get(SHARDED_PARTS_KEY, ())}
    missing = [key for key in REQUIRED_KEYS if key not in present]
    if missing:
        raise RuntimeError(
            f"the checkpoint at {path} is not a valid helios checkpoint: missing "
            f"keys {missing}; keys present: {sorted(contents)}"
        )
    saved, current = str(contents["version"]), helios.__version__
    try:
        newer = _version.Version(saved) > _version.Version(current)
    except _version.InvalidVersion:
        newer = False
    if newer:
        raise RuntimeError(
            f"the checkpoint at {path} was written by helios {saved}, newer than the "
            f"installed {current}"
        )


def read_local_checkpoint(path: pathlib.Path, map_location: Any = None) -> dict[str, Any]:
    """Read a checkpoint on this machine (see ``storage.read_checkpoint``)."""
    register_trainer_types_for_safe_load()
    if is_sharded_checkpoint(path):
        contents = read_sharded_contents(path, map_location)
    elif not zipfile.is_zipfile(path):
        raise ValueError("not a torch.save archive (truncated or overwritten)")
    else:
        contents = safe_torch_load(path, map_location=map_location)
    validate_checkpoint(contents, path)
    return contents


__all__ = [
    "CheckpointWriteError",
    "check_shard_sizes",
    "commit_sharded",
    "get_trainer_safe_types_for_load",
    "prepare_folder",
    "prepare_temporary_folder",
    "read_local_checkpoint",
    "read_metadata",
    "read_sharded_contents",
    "register_trainer_types_for_safe_load",
    "remove_temporary_files",
    "save_atomically",
    "validate_checkpoint",
    "write_json_atomically",
]
