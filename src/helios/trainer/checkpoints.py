"""Checkpoint files: names, atomic writes, discovery and validated loading."""

from __future__ import annotations

import os
import pathlib
import re
import tempfile
import warnings
import zipfile
from typing import Any

import torch
from packaging import version as _version

from helios.core import logging
from helios.core.utils import safe_torch_load

from .state import TrainingState

CHECKPOINT_SUFFIX = ".pth"
TEMPORARY_SUFFIX = ".tmp"
REQUIRED_KEYS = ("version", "training_state", "model", "rng")
_NAME_PATTERN = re.compile(r"epoch_(\d+)_iter_(\d+)")


def get_trainer_safe_types_for_load() -> list[type]:
    """Return the types, beyond tensors and builtins, that a checkpoint may contain.

    Returns:
        The list of types to register for ``torch.load(weights_only=True)``.
    """
    return [TrainingState, pathlib.PosixPath, pathlib.WindowsPath]


def register_trainer_types_for_safe_load() -> None:
    """Register the trainer's checkpoint types for ``torch.load(weights_only=True)``."""
    torch.serialization.add_safe_globals(list(get_trainer_safe_types_for_load()))  # type: ignore[arg-type]


def checkpoint_position(path: pathlib.Path) -> tuple[int, int] | None:
    """Return the ``(epoch, iteration)`` encoded in a checkpoint name, if any.

    Args:
        path: the checkpoint path.

    Returns:
        The position, or ``None`` if the name holds none.
    """
    if path.suffix != CHECKPOINT_SUFFIX or path.name.startswith("."):
        return None
    match = _NAME_PATTERN.search(path.stem)
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2))


def list_checkpoints(root: pathlib.Path | None) -> list[pathlib.Path]:
    """List the checkpoints in a folder, newest (highest epoch, then iteration) first.

    Args:
        root: the folder (``None`` or missing gives an empty list).

    Returns:
        The checkpoint paths.
    """
    if root is None or not root.is_dir():
        return []
    found = []
    for path in root.glob(f"*{CHECKPOINT_SUFFIX}"):
        position = checkpoint_position(path)
        if position is not None:
            found.append((position, path.name, path))
    found.sort(reverse=True)
    return [path for _, _, path in found]


def find_last_checkpoint(root: pathlib.Path | None) -> pathlib.Path | None:
    """Find the newest checkpoint in a folder.

    Names must contain ``epoch_<e>_iter_<i>``; the newest is the one with the highest epoch,
    then the highest iteration (``epoch_0_iter_0`` included).

    Args:
        root: the folder where the checkpoints are stored.

    Returns:
        The path of the newest checkpoint, or ``None`` if there is none.
    """
    checkpoints = list_checkpoints(root)
    return checkpoints[0] if checkpoints else None


def checkpoint_name(save_name: str, state: TrainingState) -> str:
    """Return the base name (no metadata, no extension) of a checkpoint for a state.

    Args:
        save_name: the model's save name.
        state: the training state being saved.

    Returns:
        ``<save_name>_epoch_<global_epoch>_iter_<current_iteration>``.
    """
    return f"{save_name}_epoch_{state.global_epoch}_iter_{state.current_iteration}"


def save_atomically(state_dict: dict[str, Any], path: pathlib.Path) -> None:
    """Write a checkpoint so that a crash at any moment leaves no partial file behind.

    The data goes to a temporary file in the same folder, which is flushed, synced to disk
    and then renamed over the target: the target is either the old file or the new one.

    Args:
        state_dict: the checkpoint contents.
        path: the final path.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX, dir=path.parent
    )
    try:
        os.fchmod(fd, 0o666 & ~_current_umask())
        with os.fdopen(fd, "wb") as file:
            torch.save(state_dict, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        pathlib.Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def remove_temporary_files(root: pathlib.Path | None) -> None:
    """Delete the temporary files that saves interrupted by a crash left in a folder.

    Args:
        root: the checkpoint folder.
    """
    if root is None or not root.is_dir():
        return
    for path in root.glob(f".*{CHECKPOINT_SUFFIX}.*{TEMPORARY_SUFFIX}"):
        path.unlink(missing_ok=True)


def _fsync_directory(folder: pathlib.Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def validate_checkpoint(state_dict: Any, path: pathlib.Path) -> None:
    """Check that a loaded object is a checkpoint this version of helios can resume.

    Args:
        state_dict: the loaded object.
        path: where it was loaded from, for the message.

    Raises:
        RuntimeError: naming the missing keys or the newer version.
    """
    import helios

    if not isinstance(state_dict, dict):
        raise RuntimeError(
            f"error: the checkpoint at {path} is not a valid helios checkpoint: expected a "
            f"dict, found {type(state_dict).__name__}"
        )
    missing = [key for key in REQUIRED_KEYS if key not in state_dict]
    if missing:
        raise RuntimeError(
            f"error: the checkpoint at {path} is not a valid helios checkpoint: missing "
            f"keys {missing}; keys present: {sorted(state_dict)}"
        )
    saved, current = str(state_dict["version"]), helios.__version__
    try:
        newer = _version.Version(saved) > _version.Version(current)
    except _version.InvalidVersion:
        newer = False
    if newer:
        raise RuntimeError(
            f"error: the checkpoint at {path} was written by helios {saved}, newer than the "
            f"installed {current}"
        )


_CORRUPTION_ERRORS = (RuntimeError, EOFError, OSError, ValueError)


def load_newest_valid_checkpoint(
    root: pathlib.Path | None, map_location: Any = None
) -> tuple[pathlib.Path, dict[str, Any]] | None:
    """Load the newest readable checkpoint of a folder.

    A newest checkpoint that is truncated or unreadable is reported with a warning naming the
    file, and the previous one is tried. Unregistered types in a readable checkpoint
    (``pickle.UnpicklingError``) are not corruption and are raised.

    Args:
        root: the folder of the checkpoints.
        map_location: passed to ``torch.load``.

    Returns:
        The path and contents of the checkpoint, or ``None`` if none could be read.
    """
    for path in list_checkpoints(root):
        try:
            if not zipfile.is_zipfile(path):
                raise ValueError("not a torch.save archive (truncated or overwritten)")
            state_dict = safe_torch_load(path, map_location=map_location)
            validate_checkpoint(state_dict, path)
        except _CORRUPTION_ERRORS as error:
            message = (
                f"checkpoint {path} could not be read ({type(error).__name__}: {error}); "
                "trying the previous one"
            )
            warnings.warn(message, RuntimeWarning, stacklevel=2)
            if logging.is_root_logger_active():
                logging.get_root_logger().warning(message)
            continue
        return path, state_dict
    return None
