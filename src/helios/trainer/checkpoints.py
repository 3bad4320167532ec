"""Checkpoints: gathered and restored by named parts, written atomically, found and loaded.

Reading order for one save and one resume: :py:class:`RunCheckpoint` (``save`` gathers
every part's ``state_dict()``; ``resume`` loads the newest readable file and hands each part
its ``load_state_dict()``), then :py:func:`save_atomically` and
:py:func:`load_newest_valid_checkpoint`. The Trainer lists the parts of a run in one place
(``Trainer._checkpoint_parts``); adding a part is one line there.

On-disk layout (a dict saved with ``torch.save``), compatible with Helios 1.2.7's keys:

* ``version``: the helios version that wrote it.
* one key per shared part: ``training_state``, ``model``, each plug-in's id, and the keys
  of flat parts (``log_path``, ``run_path``); a part whose state is ``None`` is left out.
* ``ranks``: one entry per rank, ``{"rng": ..., "sampler": {"epoch", "start_iter"}}``
  (:py:class:`RankState`), and ``rng``: rank 0's RNG states, the reference key.

A checkpoint of a sharded model is a ``.dcp`` folder instead: the parts whose state is
sharded go through Distributed Checkpoint, every rank writing its shards, and the file
above (``helios.pth`` in the folder) lists them under ``sharded_parts``
(:py:mod:`helios.trainer.sharded_checkpoint`).
"""

from __future__ import annotations

import contextlib
import errno
import pathlib
import re
import shutil
import warnings
import zipfile
from collections.abc import Callable, Iterator, Mapping
from typing import IO, Any, Protocol, runtime_checkable

import torch
from packaging import version as _version

from helios.core import logging, rng
from helios.core.files import TEMPORARY_SUFFIX, write_atomically
from helios.core.utils import safe_torch_load

from . import sharded_checkpoint as sharded
from .async_save import BackgroundWriter, CheckpointWriteError, SnapshotBuffers, snapshot
from .retention import INDEX_NAME, CheckpointRetention, RetentionUpdate
from .state import TrainingState

CHECKPOINT_SUFFIX = ".pth"
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
    torch.serialization.add_safe_globals(list(get_trainer_safe_types_for_load()))


def checkpoint_position(path: pathlib.Path) -> tuple[int, int] | None:
    """Return the ``(epoch, iteration)`` encoded in a checkpoint name, if any.

    Args:
        path: the checkpoint path.

    Returns:
        The position, or ``None`` if the name holds none.
    """
    if path.suffix not in (CHECKPOINT_SUFFIX, sharded.SHARDED_SUFFIX) or path.name.startswith("."):
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
    candidates = [*root.glob(f"*{CHECKPOINT_SUFFIX}"), *root.glob(f"*{sharded.SHARDED_SUFFIX}")]
    for path in candidates:
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
    (:py:mod:`helios.trainer.sharded_checkpoint`).

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


class _RecordingFile:
    """A file wrapper that keeps the first OS error of a write.

    ``torch.save`` turns a failed ``write`` into its own internal error ("enforce fail ...
    unexpected pos"); the recorded error is the one to report.
    """

    def __init__(self, file: Any) -> None:
        self._file = file
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            written: int = self._file.write(data)
        except OSError as error:
            if self.error is None:
                self.error = error
            raise
        return written

    def flush(self) -> None:
        try:
            self._file.flush()
        except OSError as error:
            if self.error is None:
                self.error = error
            raise


def save_atomically(state_dict: dict[str, Any], path: pathlib.Path) -> None:
    """Write a checkpoint so that a crash at any moment leaves no partial file behind.

    The data goes to a temporary file in the same folder, which is flushed, synced to disk
    and then renamed over the target: the target is either the old file or the new one
    (:py:func:`helios.core.files.write_atomically`).

    Args:
        state_dict: the checkpoint contents.
        path: the final path.

    Raises:
        CheckpointWriteError: if the file cannot be written (full disk, file-size limit,
            read-only folder, ...), naming the path and the operating system's error.
    """
    recording: _RecordingFile | None = None

    def write(file: IO[bytes]) -> None:
        nonlocal recording
        recording = _RecordingFile(file)
        torch.save(state_dict, recording)  # type: ignore[arg-type]

    try:
        write_atomically(path, write)
    except (OSError, RuntimeError) as error:
        cause: BaseException = error
        if recording is not None and recording.error is not None:
            cause = recording.error
        raise CheckpointWriteError(
            f"error: could not write checkpoint {path}: {_describe_os_error(cause)}", path
        ) from cause


def _describe_os_error(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        name = errno.errorcode.get(error.errno or 0, str(error.errno))
        where = f" ({error.filename})" if error.filename else ""
        return f"[{name}] {error.strerror}{where}"
    return f"{type(error).__name__}: {error}"


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
        f".*{sharded.SHARDED_SUFFIX}*{TEMPORARY_SUFFIX}",
    ):
        for path in root.glob(pattern):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


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
    present = {*state_dict, *state_dict.get(sharded.SHARDED_PARTS_KEY, ())}
    missing = [key for key in REQUIRED_KEYS if key not in present]
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
            if sharded.is_sharded_checkpoint(path):
                state_dict = sharded.read_contents(path, map_location)
            elif not zipfile.is_zipfile(path):
                raise ValueError("not a torch.save archive (truncated or overwritten)")
            else:
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


@runtime_checkable
class CheckpointPart(Protocol):
    """An owner of state that goes into checkpoints under one key."""

    def state_dict(self) -> Any:
        """Return the state to save (``None``: nothing to save)."""

    def load_state_dict(self, state_dict: Any) -> None:
        """Restore a state returned by :py:meth:`state_dict`."""


@runtime_checkable
class FlatCheckpointPart(CheckpointPart, Protocol):
    """A part whose ``state_dict()`` is a dict whose entries are top-level keys of the file.

    It keeps reference keys such as ``log_path`` and ``run_path`` where Helios 1.2.7 put them.
    """

    checkpoint_keys: tuple[str, ...]


class RankState:
    """One rank's part of every checkpoint: its RNG states and its sampler position.

    Restoring is deferred: :py:meth:`load_state_dict` keeps the saved states and the loop
    applies them at the exact point where the uninterrupted run was when it saved
    (:py:meth:`restore_rng`, :py:meth:`resume_position`).

    The sampler position holds the world size and the number of samples of the epoch's
    global order consumed by all ranks together, so a run resumed on another number of
    processes continues the epoch where it stopped (no sample seen twice or skipped). Its
    ranks keep their own RNG states where the checkpoint has them; the others are seeded
    from (seed, iteration, rank) and the log says which.

    Args:
        state: the training state whose position is saved.
        rank: the global rank of this process.
        world_size: the number of processes of the run.
        seed: the run's random seed (for RNG states that must be re-derived).
    """

    def __init__(
        self, state: TrainingState, rank: int = 0, world_size: int = 1, seed: int = 0
    ) -> None:
        self._state = state
        self._rank = rank
        self._world_size = world_size
        self._seed = seed
        self._loaded = False
        self._saved_rng: dict[str, Any] | None = None
        self._saved_sampler: dict[str, int] | None = None
        self._held_rng: dict[str, Any] | None = None
        self._sampler: Any = None
        self._pass_base = (0, 0)

    def track_sampler(self, sampler: Any) -> None:
        """Follow the training sampler (its batch size gives the global position)."""
        self._sampler = sampler

    def start_pass(self, consumed: int = 0, dataset_iter: int = 0) -> None:
        """Note where the sampler's pass over the current epoch began."""
        self._pass_base = (consumed, dataset_iter)

    def hold_rng(self) -> None:
        """Keep the RNG states of this moment for the saves until :py:meth:`release_rng`.

        A checkpoint written while a validation cycle is interrupted must record the RNGs
        of the moment the cycle began, where the resumed run starts it again.
        """
        self._held_rng = rng.get_rng_state_dict()

    def release_rng(self) -> None:
        """Let saves record the current RNG states again."""
        self._held_rng = None

    def state_dict(self) -> dict[str, Any]:
        """Return this rank's RNG states and sampler position."""
        state = self._state
        position = {
            "epoch": state.global_epoch - 1,
            "start_iter": state.dataset_iter,
            "world_size": self._world_size,
        }
        batch_size = getattr(self._sampler, "batch_size", None)
        if isinstance(batch_size, int):
            consumed, first_iter = self._pass_base
            batches = state.dataset_iter - first_iter
            position["consumed"] = consumed + batches * batch_size * self._world_size
        return {
            "rng": self._held_rng if self._held_rng is not None else rng.get_rng_state_dict(),
            "sampler": position,
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Keep a saved entry to apply at the resume point (``rng`` may be ``None``)."""
        self._loaded = True
        self._saved_rng = state_dict.get("rng")
        self._saved_sampler = state_dict.get("sampler")

    @property
    def is_pending(self) -> bool:
        """Whether a loaded entry still waits to be applied."""
        return self._loaded

    def restore_rng(self) -> None:
        """Restore the saved RNG states, or seed them afresh where none were saved (once)."""
        if not self._loaded:
            return
        self._loaded = False
        if self._saved_rng is not None:
            rng.load_rng_state_dict(self._saved_rng)
            self._saved_rng = None
            return
        from helios.data.datamodule import sample_seed

        iteration = self._state.global_iteration
        rng.seed_rngs(sample_seed(self._seed, iteration, f"rank{self._rank}"))

    def resume_position(self, default: dict[str, int]) -> dict[str, int]:
        """Return where the sampler continues the epoch the checkpoint was saved in.

        Args:
            default: the position from the training state (same world size).

        Raises:
            RuntimeError: if the world size changed and the checkpoint has no global
                position.
        """
        saved = self._saved_sampler
        if not saved:
            return default
        if saved.get("world_size", self._world_size) == self._world_size:
            return {"epoch": saved["epoch"], "start_iter": saved["start_iter"]}
        if "consumed" not in saved:
            raise RuntimeError(
                f"error: the checkpoint was written by {saved['world_size']} processes and "
                f"this run has {self._world_size}, but it holds no global position in the "
                "epoch; resume it with the same number of processes"
            )
        self._pass_base = (saved["consumed"], self._state.dataset_iter)
        return {"epoch": saved["epoch"], "start_iter": 0, "global_start": saved["consumed"]}


def _rank_entry(saved: Mapping[str, Any], rank: int, world_size: int) -> Mapping[str, Any]:
    """Return the entry a rank resumes from; say so when the world size changed."""
    entries = saved.get("ranks")
    if not isinstance(entries, list) or not entries:  # written before per-rank entries
        entries = [{"rng": saved["rng"]}]
    if len(entries) != world_size and rank == 0:
        rederived = list(range(len(entries), world_size))
        message = (
            f"the checkpoint was written by {len(entries)} process(es) and this run has "
            f"{world_size}: every rank continues the epoch from the global position saved "
            "in it; "
            + (
                f"ranks {rederived} have no saved RNG states and are seeded from (seed, "
                "iteration, rank)"
                if rederived
                else f"the RNG states of ranks {world_size}..{len(entries) - 1} are dropped"
            )
        )
        warnings.warn(message, RuntimeWarning, stacklevel=3)
        if logging.is_root_logger_active():
            logging.get_root_logger().warning(message)
    if rank < len(entries):
        return entries[rank]
    return {"rng": None, "sampler": entries[0].get("sampler")}


def _write_and_retain(
    contents: dict[str, Any], path: pathlib.Path, update: RetentionUpdate | None
) -> None:
    """Write a checkpoint durably, then apply the retention update it makes due."""
    save_atomically(contents, path)
    logging.get_root_logger().info(f"Saved checkpoint {path}")
    if update is not None:
        update.apply()


def _unexpected_shards(contents: Mapping[str, Any]) -> RuntimeError | None:
    """The error for ``DTensor`` shards in a part saved by rank 0 alone, if there are any.

    Rank 0's shards without the other ranks' would be a checkpoint that cannot be resumed.
    A part is saved as shards when it says so (``is_sharded``: for the model, a network
    found among its attributes holds ``DTensor`` parameters).
    """
    from helios.model.sharding import holds_sharded_tensors

    keys = [key for key, value in contents.items() if holds_sharded_tensors(value)]
    if not keys:
        return None
    return RuntimeError(
        f"error: the checkpoint entries {keys} hold DTensor shards, but helios did not find "
        "a sharded network among the model's attributes, so only rank 0's shards would be "
        "saved. Keep each sharded network in an attribute of the model (or a list or dict "
        "attribute), as the default state_dict finds them"
    )


def _gather_to_rank0(entry: Any) -> list[Any]:
    gathered: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, entry)
    return gathered


class RunCheckpoint:
    """Saves and restores the checkpoints of one run, part by part.

    Args:
        folder: the checkpoint folder of the run (``None``: never saved nor loaded).
        parts: the shared parts by key, in restore order (written by rank 0).
        rank_state: this rank's RNG and sampler part (gathered from every rank).
        name: the file name (without extension) for a training state.
        rank: the global rank of this process.
        is_distributed: whether the run has several processes.
        map_location: passed to ``torch.load``.
        retention: the run's retention record (also listed in ``parts``); ``None``: every
            checkpoint is kept.
        asynchronous: write in a background thread after a synchronous snapshot (see
            :py:mod:`helios.trainer.async_save`).
    """

    def __init__(
        self,
        folder: pathlib.Path | None,
        parts: Mapping[str, CheckpointPart],
        rank_state: RankState,
        name: Callable[[TrainingState], str],
        rank: int = 0,
        is_distributed: bool = False,
        map_location: Any = None,
        retention: CheckpointRetention | None = None,
        asynchronous: bool = False,
    ) -> None:
        self.folder = folder
        self.parts = dict(parts)
        self.rank_state = rank_state
        self._name = name
        self._rank = rank
        self._is_distributed = is_distributed
        self._map_location = map_location
        self.retention = retention
        self._writer = BackgroundWriter() if asynchronous else None
        self._buffers = SnapshotBuffers()
        # Inspects the gathered contents before anything is written; returns the error
        # that stops the save (the non-finite guard), or None.
        self.check: Callable[[dict[str, Any], TrainingState], BaseException | None] | None
        self.check = None
        self._warned_sync_shards = False

    def prepare_folder(self) -> None:
        """Create the folder and remove what interrupted saves left there (rank 0)."""
        if self.folder is not None and self._rank == 0:
            self.folder.mkdir(parents=True, exist_ok=True)
            remove_temporary_files(self.folder)

    def save(self, state: TrainingState) -> pathlib.Path | None:
        """Save a checkpoint at ``state``; every rank calls this, rank 0 writes the file.

        When a part is sharded (a model sharded with FSDP2), every rank also writes its
        shards, into a checkpoint folder (:py:mod:`helios.trainer.sharded_checkpoint`).

        Args:
            state: the training state being saved.

        Returns:
            The path written (on rank 0), else ``None``.

        Raises:
            CheckpointWriteError: if the previous background save failed (on every rank).
            Exception: what :py:attr:`check` returned for the gathered contents.
        """
        entry = self.rank_state.state_dict()
        shards = self._sharded_states()
        path: pathlib.Path | None = None
        contents: dict[str, Any] = {}
        update: RetentionUpdate | None = None
        problem: BaseException | None = None
        if self._rank == 0 and self.folder is not None:
            try:
                if self._writer is not None:
                    # At most one save in flight; its error (naming its file) surfaces here.
                    self._writer.wait()
                contents = self._gather_parts(without=shards)
                suffix = sharded.SHARDED_SUFFIX if shards else CHECKPOINT_SUFFIX
                path = self.folder / f"{self._name(state)}{suffix}"
                if self.retention is not None:
                    # The record saved in a checkpoint includes that checkpoint.
                    update = self.retention.register(
                        path, state.global_epoch, state.current_iteration
                    )
                    record = self.retention.state_dict()
                    for key, part in self.parts.items():
                        if part is self.retention and record is not None:
                            contents[key] = record
                problem = _unexpected_shards(contents)
                if self.check is not None and problem is None:
                    problem = self.check(contents, state)
                if shards:
                    sharded.prepare_temporary_folder(path)
            except CheckpointWriteError as error:
                problem = error
        if shards and self.check is not None and problem is None:
            problem = self.check(shards, state)  # each rank checks its own shards
        if self._is_distributed:
            # Rank 0's path and every rank's verdict travel with the gather, so every rank
            # writes into the same folder, or stops together.
            gathered = _gather_to_rank0((entry, problem, path))
            entries = [e for e, _, _ in gathered]
            problem = next((p for _, p, _ in gathered if p is not None), None)
            if shards:
                path = gathered[0][2]
        else:
            entries = [entry]
        if problem is not None:
            raise problem
        if path is None:
            return None
        if shards:
            return self._save_sharded(shards, path, contents, entries, update)
        contents["rng"] = entries[0]["rng"]
        contents["ranks"] = entries
        if self._writer is None:
            _write_and_retain(contents, path, update)
        else:
            # The previous write has completed (waited for above): reuse its buffers.
            self._buffers.recycle()
            copied = snapshot(contents, self._buffers)
            self._writer.submit(lambda: _write_and_retain(copied, path, update), path)
        return path

    def _sharded_states(self) -> dict[str, Any]:
        """The states of the parts that are sharded now, by key (every rank, its shards)."""
        if self.folder is None:
            return {}
        return {
            key: part.state_dict()
            for key, part in self.parts.items()
            if getattr(part, "is_sharded", False)
        }

    def _save_sharded(
        self,
        shards: dict[str, Any],
        path: pathlib.Path,
        contents: dict[str, Any],
        entries: list[Any],
        update: RetentionUpdate | None,
    ) -> pathlib.Path | None:
        """Write every rank's shards, then rank 0 commits the folder; all ranks agree."""
        if self._writer is not None and not self._warned_sync_shards:
            self._warned_sync_shards = True
            logging.get_root_logger().warning(
                "chkpt_async: the shards of a sharded model are written synchronously"
            )
        error: BaseException | None = None
        try:
            sharded.write_shards(shards, path)
        except Exception as failure:  # Distributed Checkpoint raises on every rank
            error = CheckpointWriteError(
                f"error: could not write the shards of checkpoint {path}: {failure}", path
            )
        if error is None and self._rank == 0:
            contents["rng"] = entries[0]["rng"]
            contents["ranks"] = entries
            contents[sharded.SHARDED_PARTS_KEY] = sorted(shards)
            try:
                sharded.commit(contents, path)
            except (CheckpointWriteError, OSError) as failure:
                error = failure
            else:
                logging.get_root_logger().info(f"Saved checkpoint {path}")
                if update is not None:
                    update.apply()
        if self._is_distributed:
            error = next((e for e in _gather_to_rank0(error) if e is not None), None)
        if error is not None:
            raise error
        return path if self._rank == 0 else None

    def _gather_parts(self, without: Mapping[str, Any]) -> dict[str, Any]:
        import helios

        contents: dict[str, Any] = {"version": helios.__version__}
        for key, part in self.parts.items():
            if key in without:
                continue
            value = part.state_dict()
            if isinstance(part, FlatCheckpointPart):
                contents.update({k: v for k, v in value.items() if v is not None})
            elif value is not None:
                contents[key] = value
        return contents

    def close(self, raise_errors: bool = True) -> None:
        """Wait for a background save in flight (the end of ``fit`` calls this).

        Args:
            raise_errors: raise the background write's error (else it is logged, for a run
                that already fails for another reason).

        Raises:
            CheckpointWriteError: if the background write failed, naming the file.
        """
        if self._writer is not None:
            self._writer.close(raise_errors)

    def resume(self) -> pathlib.Path | None:
        """Load the newest readable checkpoint and restore every part from it.

        Parts whose key the file lacks are left as they are.

        Returns:
            The path of the checkpoint, or ``None`` if there is none.
        """
        found = load_newest_valid_checkpoint(self.folder, self._map_location)
        if found is None:
            return None
        path, saved = found
        sharded_keys = saved.get(sharded.SHARDED_PARTS_KEY, ())
        for key, part in self.parts.items():
            if key in sharded_keys:
                restore_sharded_part(path, key, part)
            elif key in saved and getattr(part, "is_sharded", False):
                with _fitting(path, key):
                    sharded.load_full_into_sharded(saved[key], part)
            else:
                restore_part(path, key, part, saved)
        world_size = torch.distributed.get_world_size() if self._is_distributed else 1
        self.rank_state.load_state_dict(_rank_entry(saved, self._rank, world_size))
        return path


class CheckpointMismatchError(RuntimeError):
    """A checkpoint that does not fit the run (a part's ``load_state_dict`` failed)."""


@contextlib.contextmanager
def _fitting(path: pathlib.Path, key: str) -> Iterator[None]:
    """Turn a part's failure to take its entry into a :py:class:`CheckpointMismatchError`."""
    try:
        yield
    except Exception as error:
        raise CheckpointMismatchError(
            f"error: the checkpoint {path} does not fit this run: restoring its '{key}' "
            f"entry failed ({type(error).__name__}: {error}). If the {key} changed on "
            f"purpose (a new architecture, say), start fresh: move or delete "
            f"{path.parent}, or give the model a new save_name"
        ) from error


def restore_part(
    path: pathlib.Path, key: str, part: CheckpointPart, saved: Mapping[str, Any]
) -> None:
    """Hand one part its entry of a loaded checkpoint (nothing if the file lacks it).

    Args:
        path: the checkpoint file, for the message.
        key: the part's key.
        part: the part.
        saved: the loaded checkpoint.

    Raises:
        CheckpointMismatchError: if the part refuses its entry (a changed architecture, say),
            naming the file and the part and saying how to start fresh.
    """
    with _fitting(path, key):
        if isinstance(part, FlatCheckpointPart):
            part.load_state_dict({k: saved.get(k) for k in part.checkpoint_keys})
        elif key in saved:
            part.load_state_dict(saved[key])


def restore_sharded_part(path: pathlib.Path, key: str, part: CheckpointPart) -> None:
    """Load one part from the shards of a sharded checkpoint (every rank calls this).

    Args:
        path: the checkpoint folder.
        key: the part's key.
        part: the part (its state is resharded to this run's ranks).

    Raises:
        CheckpointMismatchError: if the shards do not fit the part, naming the folder.
    """
    with _fitting(path, key):
        sharded.load_sharded_part(path, key, part)
