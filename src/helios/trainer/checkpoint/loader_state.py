"""Each rank's position in a stream: the state of its training loader, a per-rank part.

When the training data is a stream (an iterable dataset, read through a
:py:class:`~helios.data.stream_loader.StreamLoader`), every rank saves its loader's
``state_dict()`` under ``loader`` in its entry of ``ranks``: the position of each of its
readers (the loader workers) after the last batch trained on, and the stream's own state.
Map-style data needs no such entry: its position is the sampler's (see
:py:mod:`.rank_state`).

The loop applies a loaded position at the exact point of a resume inside an epoch
(:py:meth:`LoaderState.restore`); a checkpoint written at the end of an epoch needs none,
the next epoch's stream starts from its beginning.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

from helios.core import logging
from helios.core.training_state import TrainingState

from .parts import CheckpointPart


class StreamPositionError(RuntimeError):
    """A resume inside an epoch of a stream whose position cannot be restored."""


class LoaderState(CheckpointPart):
    """One rank's position in its training stream (see the module docstring).

    Args:
        state: the training state (whether a save is inside an epoch).
        global_rank: the rank of this process (rank 0 warns about a stream without state).
    """

    name = "loader"
    per_rank = True

    def __init__(self, state: TrainingState, global_rank: int = 0) -> None:
        self._state = state
        self._global_rank = global_rank
        self._loader: Any = None
        self._loaded: Mapping[str, Any] | None = None
        self._is_loaded = False
        self._warned = False

    def track(self, loader: Any) -> None:
        """Follow the training loader (only a stream's loader has a position to save)."""
        self._loader = loader if hasattr(loader, "stream") else None

    def state_dict(self) -> dict[str, Any] | None:
        """Return the loader's position, or ``None`` (map-style data: no entry)."""
        loader = self._loader
        if loader is None:
            return None
        if not loader.stream.is_stateful and not self._warned:
            self._warned = True
            self._warn_stateless(loader)
        if not self._state.dataset_iter:
            return None  # the end of an epoch: the next one starts the stream afresh
        return loader.state_dict()

    def load_state_dict(self, state_dict: Any) -> None:
        """Keep a saved position to apply at the resume point."""
        self._loaded, self._is_loaded = state_dict, True

    def read(self, saved: Mapping[str, Any]) -> None:
        """Keep this rank's ``loader`` entry (none: nothing to restore, noted)."""
        self.load_state_dict(saved.get(self.name))

    def restore(self) -> None:
        """Apply the loaded position to the training loader (a resume inside an epoch).

        Raises:
            StreamPositionError: if the checkpoint holds no position for this rank's
                stream (written by fewer processes, or over map-style data).
            helios.data.stream_loader.StreamLoaderMismatchError: if the position belongs to
                another split of the stream (processes or workers).
        """
        loaded, was_loaded = self._loaded, self._is_loaded
        self._loaded, self._is_loaded = None, False
        if self._loader is None or not was_loaded:
            return
        if loaded is None:
            raise StreamPositionError(
                f"the checkpoint holds no position in the training stream for rank "
                f"{self._global_rank}, and the run resumes inside epoch "
                f"{self._state.global_epoch}: it was written by fewer processes, or while "
                "the training data was not a stream. Resume with the processes and data "
                "that wrote it"
            )
        self._loader.load_state_dict(loaded)

    def _warn_stateless(self, loader: Any) -> None:
        """Say once what a resume inside an epoch will do with a stream without state."""
        if self._global_rank != 0:
            return
        stream = loader.stream
        what = (
            "reads the epoch's stream again from its beginning and drops the samples each "
            "reader had yielded before (no batches are built, but the reading takes time "
            "in proportion to the position)"
            if stream.resume == "skip"
            else "starts the epoch's stream again from its beginning, so the samples of "
            "the epoch trained on before the checkpoint are trained on again"
        )
        other = "restart" if stream.resume == "skip" else "skip"
        message = (
            f"the training stream {type(stream.dataset).__name__} has no state_dict(): "
            "its position cannot be saved. A run resumed from a checkpoint inside an epoch "
            f"{what}. Set DataLoaderParams(stream_resume={other!r}) to choose the other "
            "behaviour, or give the dataset state_dict() and load_state_dict() for an exact "
            "resume"
        )
        warnings.warn(message, RuntimeWarning, stacklevel=2)
        if logging.is_root_logger_active():
            logging.get_root_logger().warning(message)


__all__ = ["LoaderState", "StreamPositionError"]
