"""Saving and resuming the checkpoints of one run, part by part.

:py:meth:`RunCheckpoint.save` gathers every part's state (:py:mod:`.parts`): the shared parts
from rank 0, the per-rank part from every rank; :py:meth:`RunCheckpoint.resume` loads the
newest readable checkpoint and hands each part its entry. Files are written and read by
:py:mod:`.io` only; a part whose state is sharded goes through :py:mod:`.sharded`.

In a run of several processes rank 0 decides which checkpoint every rank resumes from, and
every rank checks that it sees that checkpoint (a ``chkpt_root`` on per-node local disks
fails with :py:class:`CheckpointNotSharedError`, never a resume that differs between
nodes); a run whose model is sharded also checks, before anything trains, that every rank
sees the folder its shards will be written to.
"""

from __future__ import annotations

import contextlib
import pathlib
import secrets
import socket
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch

from helios.core import logging
from helios.core.distributed import broadcast_object
from helios.core.training_state import TrainingState
from helios.model.wrapper_keys import WRAPPER_PREFIX, differs_only_by_wrapper_prefix

from .async_save import BackgroundWriter, SnapshotBuffers, snapshot
from .io import (
    CheckpointWriteError,
    commit_sharded,
    load_newest_valid_checkpoint,
    prepare_folder,
    prepare_temporary_folder,
    read_checkpoint,
    save_atomically,
)
from .layout import CHECKPOINT_SUFFIX, SHARDED_PARTS_KEY, SHARDED_SUFFIX
from .parts import PartTable
from .rank_state import rank_entry
from .sharded import load_full_into_sharded, load_sharded_part, write_shards

Check = Callable[[dict[str, Any], TrainingState], BaseException | None]
"""Inspects gathered contents before anything is written; returns the error that stops it."""


class CheckpointMismatchError(RuntimeError):
    """A checkpoint that does not fit the run (a part's ``load_state_dict`` failed)."""


class CheckpointNotSharedError(RuntimeError):
    """Some ranks of a run cannot see the checkpoint folder that rank 0 uses.

    Raised on every rank before anything trains: when a rank cannot read the checkpoint
    rank 0 resumes from, or, for a sharded model, cannot see the folder the shards go to.
    The message names each such rank's host and the path. Added in Helios 1.3.0.
    """


class RunCheckpoint:
    """Saves and restores the checkpoints of one run, part by part.

    Args:
        folder: the checkpoint folder of the run (``None``: never saved nor loaded).
        parts: the run's parts, in restore order.
        name: the file name (without extension) for a training state.
        global_rank: the global rank of this process.
        world_size: the number of processes of the run.
        map_location: passed to ``torch.load``.
        asynchronous: write in a background thread after a synchronous snapshot (see
            :py:mod:`helios.trainer.checkpoint.async_save`).
        check: inspects the gathered contents before anything is written (the non-finite
            guard); the error it returns stops the save on every rank.
    """

    def __init__(
        self,
        folder: pathlib.Path | None,
        parts: PartTable,
        name: Callable[[TrainingState], str],
        global_rank: int = 0,
        world_size: int = 1,
        map_location: Any = None,
        asynchronous: bool = False,
        check: Check | None = None,
    ) -> None:
        self.folder, self.parts, self.check = folder, parts, check
        self._name = name
        self._global_rank, self._world_size = global_rank, world_size
        self._map_location = map_location
        self._writer = BackgroundWriter() if asynchronous else None
        self._buffers = SnapshotBuffers()
        self._warned_sync_shards = False

    def prepare_folder(self) -> None:
        """Create the folder and remove what interrupted saves left there (rank 0)."""
        if self.folder is not None and self._global_rank == 0:
            prepare_folder(self.folder)

    def save(self, state: TrainingState) -> pathlib.Path | None:
        """Save a checkpoint at ``state``; every rank calls this, rank 0 writes the file.

        When a part is sharded (a model sharded with FSDP2), every rank also writes its
        shards, into a checkpoint folder (:py:mod:`helios.trainer.checkpoint.sharded`).

        Args:
            state: the training state being saved.

        Returns:
            The path written (on rank 0), else ``None``.

        Raises:
            CheckpointWriteError: if the previous background save failed (on every rank).
            Exception: what :py:attr:`check` returned for the gathered contents.
        """
        entry: dict[str, Any] = {}
        for part in self.parts.per_rank:
            part.write(entry)
        shards = self._sharded_states()
        path: pathlib.Path | None = None
        contents: dict[str, Any] = {}
        after: list[Callable[[], None]] = []
        problem: BaseException | None = None
        if self._global_rank == 0 and self.folder is not None:
            path, contents, after, problem = self._gather(state, self.folder, shards)
        if shards and self.check is not None and problem is None:
            problem = self.check(shards, state)  # each rank checks its own shards
        # Rank 0's path and every rank's verdict travel with the entries, so every rank
        # writes into the same folder, or stops together.
        gathered = self._gather_from_ranks((entry, problem, path))
        problem = next((p for _, p, _ in gathered if p is not None), None)
        if problem is not None:
            raise problem
        path = gathered[0][2]
        if path is None or (self._global_rank != 0 and not shards):
            return None
        contents["rng"] = gathered[0][0]["rng"]
        contents["ranks"] = [e for e, _, _ in gathered]
        if shards:
            return self._save_sharded(shards, path, contents, after)
        self._write(contents, path, after)
        return path

    def _gather(
        self, state: TrainingState, folder: pathlib.Path, shards: Mapping[str, Any]
    ) -> tuple[pathlib.Path | None, dict[str, Any], list[Callable[[], None]], BaseException | None]:
        """Rank 0: the path, the shared parts' states, what follows the write, any problem."""
        import helios

        contents: dict[str, Any] = {"version": helios.__version__}
        after: list[Callable[[], None]] = []
        problem: BaseException | None = None
        path: pathlib.Path | None = None
        try:
            if self._writer is not None:
                # At most one save in flight; its error (naming its file) surfaces here.
                self._writer.wait()
            unsharded = [part for part in self.parts if part.name not in shards]
            for part in unsharded:
                part.write(contents)
            suffix = SHARDED_SUFFIX if shards else CHECKPOINT_SUFFIX
            path = folder / f"{self._name(state)}{suffix}"
            for part in unsharded:
                action = part.saving(path, state)
                if action is not None:
                    # The record a part saves in a checkpoint includes that checkpoint.
                    part.write(contents)
                    after.append(action)
            problem = _unexpected_shards(contents)
            if self.check is not None and problem is None:
                problem = self.check(contents, state)
            if shards:
                prepare_temporary_folder(path)
        except CheckpointWriteError as error:
            problem = error
        return path, contents, after, problem

    def _gather_from_ranks(self, entry: Any) -> list[Any]:
        if self._world_size == 1:
            return [entry]
        gathered: list[Any] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, entry)
        return gathered

    def _write(
        self, contents: dict[str, Any], path: pathlib.Path, after: list[Callable[[], None]]
    ) -> None:
        """Write a one-file checkpoint (now, or in the background after a snapshot)."""
        if self._writer is None:
            _write_then(contents, path, after)
            return
        # The previous write has completed (waited for in _gather): reuse its buffers.
        self._buffers.recycle()
        copied = snapshot(contents, self._buffers)
        self._writer.submit(lambda: _write_then(copied, path, after), path)

    def _sharded_states(self) -> dict[str, Any]:
        """The states of the parts that are sharded now, by key (every rank, its shards)."""
        if self.folder is None:
            return {}
        return {part.name: part.state_dict() for part in self.parts if part.is_sharded}

    def _save_sharded(
        self,
        shards: dict[str, Any],
        path: pathlib.Path,
        contents: dict[str, Any],
        after: list[Callable[[], None]],
    ) -> pathlib.Path | None:
        """Write every rank's shards, then rank 0 commits the folder; all ranks agree."""
        if self._writer is not None and not self._warned_sync_shards:
            self._warned_sync_shards = True
            logging.get_root_logger().warning(
                "chkpt_async: the shards of a sharded model are written synchronously"
            )
        error: BaseException | None = None
        try:
            write_shards(shards, path)
        except Exception as failure:  # Distributed Checkpoint raises on every rank
            error = CheckpointWriteError(
                f"could not write the shards of checkpoint {path}: {failure}", path
            )
        if error is None and self._global_rank == 0:
            contents[SHARDED_PARTS_KEY] = sorted(shards)
            try:
                _write_then(contents, path, after, commit_sharded)
            except (CheckpointWriteError, OSError) as failure:
                error = failure
        error = next((e for e in self._gather_from_ranks(error) if e is not None), None)
        if error is not None:
            raise error
        return path if self._global_rank == 0 else None

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

        Raises:
            CheckpointMismatchError: if a part refuses its entry (a changed architecture,
                say), naming the file and the part and saying how to start fresh.
            CheckpointNotSharedError: on every rank, if a rank cannot read the checkpoint
                rank 0 resumes from, or cannot see the folder of a sharded model's shards.
        """
        self._check_shared_folder()
        found = self._load_agreed_checkpoint()
        if found is None:
            return None
        path, saved = found
        sharded_keys = saved.get(SHARDED_PARTS_KEY, ())
        for part in self.parts:
            with _fitting(path, part.name):
                if part.name in sharded_keys:
                    load_sharded_part(path, part.name, part)
                elif part.name in saved and part.is_sharded:
                    load_full_into_sharded(saved[part.name], part)
                else:
                    part.read(saved)
        entry = rank_entry(saved, self._global_rank, self._world_size)
        for part in self.parts.per_rank:
            part.read(entry)
        return path

    def _load_agreed_checkpoint(self) -> tuple[pathlib.Path, dict[str, Any]] | None:
        """Load the checkpoint rank 0 resumes from, on every rank; all fail if one cannot.

        Rank 0 finds the newest readable checkpoint and sends its path; the other ranks read
        that file, not the newest one they see themselves, so that no rank resumes from
        another checkpoint (or none) when the folder is not the same everywhere.
        """
        if self._world_size == 1 or self.folder is None:
            return load_newest_valid_checkpoint(self.folder, self._map_location)
        found: tuple[pathlib.Path, dict[str, Any]] | None = None
        failure: BaseException | None = None
        if self._global_rank == 0:
            try:
                found = load_newest_valid_checkpoint(self.folder, self._map_location)
            except Exception as error:  # the other ranks must not wait for a path
                failure = error
        sent = broadcast_object((None if found is None else str(found[0]), failure is not None))
        if failure is not None:
            raise failure
        if sent[1]:
            raise RuntimeError(
                f"rank 0 could not read the newest checkpoint of {self.folder} (its error "
                "is in its output); this rank stops with it"
            )
        if sent[0] is None:
            return None
        path = pathlib.Path(sent[0])
        problem: str | None = None
        if self._global_rank != 0:
            if not path.exists():
                problem = "does not see it"
            else:
                try:
                    found = (path, read_checkpoint(path, self._map_location))
                except Exception as error:
                    problem = f"cannot read it ({type(error).__name__}: {error})"
        self._raise_unshared(
            problem,
            f"rank 0 resumes from the checkpoint {path}, but",
            "every rank must read the checkpoint rank 0 resumes from",
        )
        return found

    def _check_shared_folder(self) -> None:
        """For a sharded model: check that every rank sees the folder its shards go to.

        Rank 0 writes a token file into the folder, every rank reads it back; the file is
        removed after. A folder on per-node local disks fails here, before anything
        trains, rather than as a checkpoint with missing shards.
        """
        folder = self.folder
        if self._world_size == 1 or folder is None:
            return
        if not any(part.is_sharded for part in self.parts):
            return
        token = secrets.token_hex(16)
        marker = folder / f".helios-shared-{token}"
        problem: str | None = None
        if self._global_rank == 0:
            try:
                marker.write_text(token)
            except OSError as error:
                problem = f"cannot write into it ({error})"
        token = broadcast_object(token)
        marker = folder / f".helios-shared-{token}"
        if self._global_rank != 0:
            try:
                seen = marker.read_text()
            except OSError:
                seen = None
            if seen != token:
                problem = "does not see what rank 0 wrote into it"
        try:
            self._raise_unshared(
                problem,
                f"the model is sharded, so every rank writes its shards into {folder}, but",
                "sharded checkpoints need a chkpt_root that every rank writes to",
            )
        finally:
            if self._global_rank == 0:
                marker.unlink(missing_ok=True)

    def _raise_unshared(self, problem: str | None, what: str, need: str) -> None:
        """Raise :py:class:`CheckpointNotSharedError` on every rank if any rank had a problem."""
        where = f"{socket.gethostname()} (rank {self._global_rank})"
        reports = self._gather_from_ranks(None if problem is None else f"{where} {problem}")
        failed = [report for report in reports if report is not None]
        if failed:
            raise CheckpointNotSharedError(
                f"{what} {'; '.join(failed)}. {need.capitalize()}: put chkpt_root on a "
                "file system every node mounts (a shared folder), not on a disk of each node"
            )


def _write_then(
    contents: dict[str, Any],
    path: pathlib.Path,
    after: list[Callable[[], None]],
    write: Callable[[dict[str, Any], pathlib.Path], None] = save_atomically,
) -> None:
    """Write a checkpoint durably, then do what the parts wanted done once it is.

    ``write`` writes a file; a sharded checkpoint's folder passes its commit.
    """
    write(contents, path)
    logging.get_root_logger().info(f"Saved checkpoint {path}")
    for action in after:
        action()


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
        f"the checkpoint entries {keys} hold DTensor shards, but helios did not find "
        "a sharded network among the model's attributes, so only rank 0's shards would be "
        "saved. Keep each sharded network in an attribute of the model (or a list or dict "
        "attribute), as the default state_dict finds them"
    )


@contextlib.contextmanager
def _fitting(path: pathlib.Path, key: str) -> Iterator[None]:
    """Turn a part's failure to take its entry into a :py:class:`CheckpointMismatchError`."""
    try:
        yield
    except Exception as error:
        head = (
            f"the checkpoint {path} does not fit this run: restoring its '{key}' "
            f"entry failed ({type(error).__name__}: {error})."
        )
        if differs_only_by_wrapper_prefix(error):
            # The run is fine: nothing to start afresh, the keys only need the same wrapper.
            raise CheckpointMismatchError(
                f"{head} The keys differ only by the '{WRAPPER_PREFIX}' prefix of "
                "DistributedDataParallel: load the network's state through the same wrapper "
                "as it was saved (or through the wrapped module on both sides, as the default "
                "state_dict does); the checkpoint itself is intact"
            ) from error
        raise CheckpointMismatchError(
            f"{head} If the {key} changed on purpose (a new architecture, say), start "
            f"fresh: move or delete {path.parent}, or give the model a new save_name"
        ) from error


__all__ = ["CheckpointMismatchError", "CheckpointNotSharedError", "RunCheckpoint"]
