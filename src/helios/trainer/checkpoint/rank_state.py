"""Each rank's own part of a checkpoint: its RNG states and its sampler position.

:py:class:`RankState` is the per-rank part of the part table: every rank gives its entry
(``{"rng": ..., "sampler": ...}``), gathered into the checkpoint's ``ranks`` list, and
rank 0's RNG states are also the reference key ``rng``. It is the run's cursor in the
random streams and the data: the training loop drives it (a new pass over the data, a
validation that must not move the saved RNG states, the exact point of a resume).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

from helios.core import logging, rng
from helios.core.training_state import TrainingState

from .parts import CheckpointPart


class RankState(CheckpointPart):
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
        global_rank: the global rank of this process.
        world_size: the number of processes of the run.
        seed: the run's random seed (for RNG states that must be re-derived).
    """

    name = "rank"
    per_rank = True

    def __init__(
        self, state: TrainingState, global_rank: int = 0, world_size: int = 1, seed: int = 0
    ) -> None:
        self._state = state
        self._global_rank, self._world_size, self._seed = global_rank, world_size, seed
        # A loaded entry waits for the resume point; RNG states held during a validation.
        self._loaded = False
        self._saved_rng: dict[str, Any] | None = None
        self._saved_sampler: dict[str, int] | None = None
        self._held_rng: dict[str, Any] | None = None
        # The training sampler, and where its pass over the epoch began.
        self._sampler: Any = None
        self._pass_base = (0, 0)

    @property
    def keys(self) -> tuple[str, ...]:
        """The keys of a rank's entry (``rng`` and ``sampler``)."""
        return ("rng", "sampler")

    def write(self, contents: dict[str, Any]) -> None:
        """Fill this rank's entry with ``rng`` and ``sampler``."""
        contents.update(self.state_dict())

    def read(self, saved: Mapping[str, Any]) -> None:
        """Keep this rank's entry to apply at the resume point."""
        self.load_state_dict(saved)

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
        # A position in the global order: samplers only (a stream's is its loader's).
        if isinstance(batch_size, int) and hasattr(self._sampler, "global_start"):
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
        rng.seed_rngs(sample_seed(self._seed, iteration, f"rank{self._global_rank}"))

    def resume_position(self, default: dict[str, int]) -> dict[str, int]:
        """Return where the sampler continues the epoch the checkpoint was saved in.

        Args:
            default: the position from the training state (same world size).

        Raises:
            RuntimeError: if the world size changed and the checkpoint has no global
                position.
        """
        saved = self._saved_sampler
        if not saved or not hasattr(self._sampler, "global_start"):
            return default  # a stream's position is its loader's (LoaderState)
        if saved.get("world_size", self._world_size) == self._world_size:
            return {"epoch": saved["epoch"], "start_iter": saved["start_iter"]}
        if "consumed" not in saved:
            raise RuntimeError(
                f"the checkpoint was written by {saved['world_size']} processes and "
                f"this run has {self._world_size}, but it holds no global position in the "
                "epoch; resume it with the same number of processes"
            )
        self._pass_base = (saved["consumed"], self._state.dataset_iter)
        return {"epoch": saved["epoch"], "start_iter": 0, "global_start": saved["consumed"]}


def rank_entry(saved: Mapping[str, Any], global_rank: int, world_size: int) -> Mapping[str, Any]:
    """Return the entry of ``ranks`` a rank resumes from; say so when the world size changed.

    Args:
        saved: the loaded checkpoint.
        global_rank: the rank of this process.
        world_size: the number of processes of this run.

    Returns:
        The rank's entry (a rank beyond those of the checkpoint gets no RNG states, and
        rank 0's sampler position).
    """
    entries = saved.get("ranks")
    if not isinstance(entries, list) or not entries:  # written before per-rank entries
        entries = [{"rng": saved["rng"]}]
    if len(entries) != world_size and global_rank == 0:
        rederived = list(range(len(entries), world_size))
        continues = (
            "a position in a training stream continues only on the same split, so a resume "
            "inside an epoch of a stream stops with an error"
            if "loader" in entries[0]
            else "every rank continues the epoch from the global position saved in it"
        )
        message = (
            f"the checkpoint was written by {len(entries)} process(es) and this run has "
            f"{world_size}: {continues}; "
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
    if global_rank < len(entries):
        return entries[global_rank]
    return {"rng": None, "sampler": entries[0].get("sampler")}


__all__ = ["RankState", "rank_entry"]
