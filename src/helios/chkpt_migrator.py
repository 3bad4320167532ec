"""Bring checkpoints written by Helios 1.x (up to 1.2.7) or older helios versions up to date.

Run it as a module on a folder of checkpoints::

    python -m helios.chkpt_migrator chkpt_root/<save_name>

or call :py:func:`migrate_checkpoints_to_current_version`. Every ``*.pth`` file directly in
the folder is read, brought to the current layout and written back in place (atomically);
files already in the current layout are left untouched.

What a migration changes:

* A missing ``"version"`` (files older than Helios 1.0) is added.
* A ``training_state`` stored as a plain dict (older than Helios 1.1) becomes a
  :py:class:`~helios.trainer.TrainingState`.
* A Helios 1.x file (it has no ``"ranks"`` entry, and another ``"version"`` than the
  installed one) gets the per-rank entry that resuming here reads: the file's RNG state
  and the sampler position of its training state. Helios 1.x saved the RNG state of rank 0
  only, so a distributed run resumed from it gives every rank rank 0's RNG state. A file
  that names the installed version is left as it is.
* The ``TrainingState`` class is re-recorded under its current module (Helios 1.2.7 pickled
  it as ``helios.trainer.TrainingState``), and ``"version"`` becomes the installed version,
  so :py:func:`helios.trainer.checkpoint.storage.load_newest_valid_checkpoint` accepts the file.
* Paths written on the other kind of system (``WindowsPath`` on Linux, ``PosixPath`` on
  Windows) in ``log_path`` / ``run_path`` cannot name a file here: they are dropped with a
  warning, so the resumed run starts a new log file and TensorBoard run.

Types of your own inside a model or plug-in state must be registered with
:py:func:`torch.serialization.add_safe_globals` before migrating, as for loading.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import pathlib
import pickle
import sys
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import tqdm
from packaging import version as _version

import helios
from helios.core.utils import safe_torch_load
from helios.trainer.checkpoint.io import get_trainer_safe_types_for_load, save_atomically
from helios.trainer.checkpoint.layout import CHECKPOINT_SUFFIX
from helios.trainer.state import TrainingState

__all__ = ["migrate_checkpoint", "migrate_checkpoints_to_current_version"]

# Names under which older versions and other platforms pickled the checkpoint types.
_LEGACY_TRAINING_STATE_NAMES = ("helios.trainer.TrainingState",)
_PATH_KEYS = ("log_path", "run_path")


def _legacy_safe_globals() -> list[Any]:
    """Aliases that let ``weights_only`` loading rebuild the types of older files."""
    native = type(pathlib.Path())
    foreign: type[pathlib.PurePath]
    if os.name == "nt":  # pragma: no cover - tested on Linux
        foreign_names, foreign = ("PosixPath",), pathlib.PurePosixPath
        native_names: tuple[str, ...] = ("WindowsPath",)
    else:
        foreign_names, foreign = ("WindowsPath",), pathlib.PureWindowsPath
        native_names = ("PosixPath",)
    aliases: list[Any] = [(TrainingState, name) for name in _LEGACY_TRAINING_STATE_NAMES]
    # Python 3.13 moved the concrete paths to ``pathlib._local``; accept both spellings.
    for module in ("pathlib", "pathlib._local"):
        aliases += [(native, f"{module}.{name}") for name in native_names]
        aliases += [(foreign, f"{module}.{name}") for name in foreign_names]
    return aliases


def _global_name(entry: Any) -> str:
    if isinstance(entry, tuple):
        return str(entry[1])
    return f"{entry.__module__}.{entry.__qualname__}"


@contextlib.contextmanager
def _legacy_safe_globals_registered() -> Iterator[None]:
    """Register the aliases for the duration of a load, then restore the registry.

    ``torch`` resolves a name to whichever registered entry comes last in an unordered set,
    so entries registered under the same names (the trainer's ``WindowsPath``) are taken
    out while the aliases are in place.
    """
    saved = torch.serialization.get_safe_globals()
    aliases = _legacy_safe_globals()
    alias_names = {_global_name(alias) for alias in aliases}
    wanted = [*saved, *get_trainer_safe_types_for_load()]
    kept = [entry for entry in wanted if _global_name(entry) not in alias_names]
    torch.serialization.clear_safe_globals()
    torch.serialization.add_safe_globals([*kept, *aliases])
    try:
        yield
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(saved)


def _load(path: pathlib.Path) -> Any:
    with _legacy_safe_globals_registered():
        try:
            return safe_torch_load(path, map_location="cpu")
        except pickle.UnpicklingError as error:
            raise pickle.UnpicklingError(
                f"the checkpoint {path} holds a type that is not registered for "
                "torch.load(weights_only=True); register it with "
                f"torch.serialization.add_safe_globals([...]) before migrating ({error})"
            ) from error


def _training_state(value: Any, where: str) -> TrainingState:
    if isinstance(value, TrainingState):
        return value
    if isinstance(value, dict):
        names = {field.name for field in dataclasses.fields(TrainingState)}
        unknown = sorted(set(value) - names)
        if unknown:
            raise RuntimeError(
                f"the training_state of {where} has unknown fields {unknown}; "
                f"expected a subset of {sorted(names)}"
            )
        return TrainingState(**value)
    raise RuntimeError(
        f"the training_state of {where} is a {type(value).__name__}; expected a "
        "TrainingState or a dict of its fields"
    )


def migrate_checkpoint(state_dict: dict[str, Any], where: str = "checkpoint") -> dict[str, Any]:
    """Return a checkpoint's contents in the current layout (the input is not modified).

    Args:
        state_dict: the loaded contents of a checkpoint.
        where: how to name the checkpoint in messages (e.g. its path).

    Returns:
        The migrated contents; equal to ``state_dict`` if it was already current.

    Raises:
        RuntimeError: if the contents are not a Helios checkpoint (a dict with
            ``training_state``, ``model`` and ``rng``), or if they were written by Helios 2
            or later, whose layout is not supported.
    """
    if not isinstance(state_dict, dict):
        raise RuntimeError(
            f"{where} is not a helios checkpoint: expected a dict, found "
            f"{type(state_dict).__name__}"
        )
    missing = [key for key in ("training_state", "model", "rng") if key not in state_dict]
    if missing:
        raise RuntimeError(
            f"{where} is not a helios checkpoint: missing keys {missing}; keys "
            f"present: {sorted(state_dict)}"
        )
    migrated = dict(state_dict)
    # A file that says it was written by this version is current (Helios 1.2.7's own tests
    # migrate such a file and expect it back unchanged), with or without "ranks".
    is_current = str(state_dict.get("version")) == helios.__version__
    written_by_helios_1x = "ranks" not in state_dict and not is_current
    if written_by_helios_1x and "version" in state_dict:
        try:
            saved = _version.Version(str(state_dict["version"]))
        except _version.InvalidVersion:
            saved = None
        if saved is not None and saved.major >= 2:
            raise RuntimeError(
                f"{where} was written by Helios {saved}; only checkpoints of Helios "
                "1.x (up to 1.2.7) and of this library can be migrated"
            )
    if "version" not in migrated or written_by_helios_1x:
        migrated["version"] = helios.__version__

    state = _training_state(migrated["training_state"], where)
    migrated["training_state"] = state
    if written_by_helios_1x:
        migrated["ranks"] = [
            {
                "rng": migrated["rng"],
                "sampler": {"epoch": state.global_epoch - 1, "start_iter": state.dataset_iter},
            }
        ]
    native = type(pathlib.Path())
    for key in _PATH_KEYS:
        value = migrated.get(key)
        if isinstance(value, pathlib.PurePath) and not isinstance(value, native):
            warnings.warn(
                f"{where}: {key}={str(value)!r} was written on another operating system and "
                "is dropped; the resumed run starts a new one",
                RuntimeWarning,
                stacklevel=2,
            )
            del migrated[key]
    return migrated


def _is_unchanged(before: dict[str, Any], after: dict[str, Any]) -> bool:
    if before.keys() != after.keys():
        return False
    return all(before[key] is after[key] for key in before)


def migrate_checkpoints_to_current_version(root: pathlib.Path) -> None:
    """Migrate every ``*.pth`` checkpoint directly inside a folder, in place.

    See the module documentation for what changes. Files that need no change are not
    rewritten; the others are written atomically (a crash leaves the old file).

    Args:
        root: the folder of the checkpoints (e.g. ``chkpt_root/<save_name>``).

    Raises:
        NotADirectoryError: if ``root`` is not a folder.
        RuntimeError: if a file is not a Helios checkpoint or comes from Helios 2+.
        pickle.UnpicklingError: if a file holds a type that is not registered for safe
            loading.
    """
    root = pathlib.Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"expected root to be a folder of checkpoints, got {str(root)!r}")
    paths = sorted(p for p in root.glob(f"*{CHECKPOINT_SUFFIX}") if not p.name.startswith("."))
    for path in tqdm.tqdm(paths, desc="Migrating checkpoints", unit="chkpt"):
        contents = _load(path)
        migrated = migrate_checkpoint(contents, str(path))
        if not _is_unchanged(contents, migrated):
            save_atomically(migrated, path)


def _main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point: ``python -m helios.chkpt_migrator ROOT``."""
    parser = argparse.ArgumentParser(
        prog="python -m helios.chkpt_migrator",
        description="Bring the checkpoints in a folder up to the current helios layout.",
    )
    parser.add_argument("root", nargs=1, type=pathlib.Path, help="folder of *.pth files")
    args = parser.parse_args(argv)
    try:
        migrate_checkpoints_to_current_version(args.root[0])
    except (OSError, RuntimeError, pickle.UnpicklingError) as error:
        print(error, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main())
