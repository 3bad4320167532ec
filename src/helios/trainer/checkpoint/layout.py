"""Where checkpoints are and what they are called: names, suffixes, keys and discovery.

A run's checkpoints live in one folder (``<chkpt_root>/<save_name>``). A checkpoint is a
file ``<save_name>_epoch_<e>_iter_<i>[<metadata>].pth`` (a dict saved with
``torch.save``), or, for a sharded model, a folder of the same name ending in ``.dcp``
that holds the shards and a ``helios.pth`` with every other part
(:py:mod:`helios.trainer.checkpoint.sharded`). The newest checkpoint is the one with the
highest epoch, then the highest iteration.

Top-level keys of the dict, compatible with Helios 1.2.7's:

* ``version``: the helios version that wrote it.
* one key per shared part (:py:mod:`helios.trainer.checkpoint.parts`): ``training_state``,
  ``model``, each plug-in's id, the extra parts, and the log keys ``log_path``,
  ``run_path`` and ``tensorboard_events``; a part whose state is ``None`` is left out.
* ``ranks``: one entry per rank (RNG states and sampler position), and ``rng``: rank 0's
  RNG states, the reference key.
* ``sharded_parts`` (a ``.dcp`` checkpoint's ``helios.pth`` only): the keys written as
  shards.
"""

from __future__ import annotations

import pathlib
import re

from helios.core.files import TEMPORARY_SUFFIX
from helios.core.training_state import TrainingState

CHECKPOINT_SUFFIX = ".pth"
"""The suffix of a one-file checkpoint."""

SHARDED_SUFFIX = ".dcp"
"""The suffix of the folder of a sharded checkpoint."""

CONTENTS_NAME = "helios.pth"
"""The file of a sharded checkpoint's folder that holds every unsharded part."""

SHARDED_PARTS_KEY = "sharded_parts"
"""The key of ``helios.pth`` that lists the parts written as shards."""

INDEX_NAME = "checkpoints.json"
"""The retention index in a checkpoint folder (:py:mod:`helios.trainer.checkpoint.retention`)."""

REQUIRED_KEYS = ("version", "training_state", "model", "rng")
"""The keys every resumable checkpoint holds (a sharded one may hold some as shards)."""

_NAME_PATTERN = re.compile(r"epoch_(\d+)_iter_(\d+)")


def checkpoint_name(save_name: str, state: TrainingState) -> str:
    """Return the base name (no metadata, no extension) of a checkpoint for a state.

    Args:
        save_name: the model's save name.
        state: the training state being saved.

    Returns:
        ``<save_name>_epoch_<global_epoch>_iter_<current_iteration>``.
    """
    return f"{save_name}_epoch_{state.global_epoch}_iter_{state.current_iteration}"


def checkpoint_position(path: pathlib.Path) -> tuple[int, int] | None:
    """Return the ``(epoch, iteration)`` encoded in a checkpoint name, if any.

    Args:
        path: the checkpoint path.

    Returns:
        The position, or ``None`` if the name holds none.
    """
    if path.suffix not in (CHECKPOINT_SUFFIX, SHARDED_SUFFIX) or path.name.startswith("."):
        return None
    match = _NAME_PATTERN.search(path.stem)
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2))


def is_checkpoint_name(name: object, save_name: str | None = None) -> bool:
    """Whether ``name`` is the bare name of a checkpoint in a run's folder.

    Names read from files (the retention record inside a checkpoint, the index
    ``checkpoints.json``) pass through here before helios deletes, opens or returns
    anything by them, so a hostile file cannot name a path outside the folder. A
    checkpoint name is a plain file name (no folder part, not hidden, not ``.`` or
    ``..``) ending in ``.pth`` or ``.dcp`` that holds ``epoch_<e>_iter_<i>``; with
    ``save_name``, it starts with ``<save_name>_epoch_<e>_iter_<i>``, as every name of that
    run does (:py:func:`checkpoint_name`, then the model's metadata).

    Args:
        name: the name read from a file (any object: only a ``str`` can pass).
        save_name: the save name of the run whose checkpoints the name must be.

    Returns:
        True if the name is such a name.
    """
    if not isinstance(name, str) or not name or name.startswith("."):
        return False
    if any(c in name for c in ("/", "\\", "\0")) or not name.isprintable():
        return False
    path = pathlib.PurePosixPath(name)
    if path.name != name or path.suffix not in (CHECKPOINT_SUFFIX, SHARDED_SUFFIX):
        return False
    if save_name is None:
        return _NAME_PATTERN.search(path.stem) is not None
    return re.match(rf"{re.escape(save_name)}_epoch_\d+_iter_\d+", name) is not None


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
    for path in [*root.glob(f"*{CHECKPOINT_SUFFIX}"), *root.glob(f"*{SHARDED_SUFFIX}")]:
        position = checkpoint_position(path)
        if position is not None:
            found.append((position, path.name, path))
    found.sort(reverse=True)
    return [path for _, _, path in found]


def find_last_checkpoint(root: pathlib.Path | None) -> pathlib.Path | None:
    """Find the newest checkpoint in a folder.

    Names must contain ``epoch_<e>_iter_<i>``; the newest is the one with the highest epoch,
    then the highest iteration (``epoch_0_iter_0`` included). A checkpoint is a ``.pth``
    file, or a ``.dcp`` folder for a sharded model
    (:py:mod:`helios.trainer.checkpoint.sharded`).

    Args:
        root: the folder where the checkpoints are stored.

    Returns:
        The path of the newest checkpoint, or ``None`` if there is none.
    """
    checkpoints = list_checkpoints(root)
    return checkpoints[0] if checkpoints else None


def is_sharded_checkpoint(path: pathlib.Path) -> bool:
    """Whether ``path`` names a sharded checkpoint (a ``.dcp`` folder)."""
    return path.suffix == SHARDED_SUFFIX and path.is_dir()


def temporary_folder(path: pathlib.Path) -> pathlib.Path:
    """Return the hidden folder a sharded checkpoint is written in before its rename."""
    return path.parent / f".{path.name}{TEMPORARY_SUFFIX}"


__all__ = [
    "CHECKPOINT_SUFFIX",
    "CONTENTS_NAME",
    "INDEX_NAME",
    "REQUIRED_KEYS",
    "SHARDED_PARTS_KEY",
    "SHARDED_SUFFIX",
    "checkpoint_name",
    "checkpoint_position",
    "find_last_checkpoint",
    "is_checkpoint_name",
    "is_sharded_checkpoint",
    "list_checkpoints",
    "temporary_folder",
]
