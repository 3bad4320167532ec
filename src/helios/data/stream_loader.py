"""The data loader of a stream: torchdata's ``StatefulDataLoader`` over a ResumableStream.

This module imports ``torchdata``; :py:func:`helios.data.create_dataloader` imports it only
when it is given an iterable dataset.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

from torchdata.stateful_dataloader import StatefulDataLoader

from .streams import ResumableStream


class StreamLoaderMismatchError(ValueError):
    """A saved stream position that this loader cannot continue from."""


class StreamLoader(StatefulDataLoader):
    """Loads the batches of a :py:class:`~helios.data.streams.ResumableStream`.

    A ``StatefulDataLoader`` that records the state of every reader after every batch
    (``snapshot_every_n_steps=1``), so :py:meth:`state_dict` is the position right after
    the last batch it yielded and restoring it never replays a batch. The state also names
    the split it was saved with (processes and workers): a position saved by another split
    is refused, since the parts of the stream would not line up.

    Args:
        stream: the stream.
        **kwargs: the ``DataLoader`` arguments (``batch_size``, ``num_workers``, ...).
    """

    def __init__(self, stream: ResumableStream, **kwargs: Any) -> None:
        with warnings.catch_warnings():
            # torchdata 0.11 calls torch.set_vital, which newer torch releases deprecate.
            warnings.filterwarnings("ignore", "'set_vital' is deprecated", UserWarning)
            super().__init__(stream, snapshot_every_n_steps=1, **kwargs)
        self.stream = stream

    def state_dict(self) -> dict[str, Any]:
        """Return the position after the last batch yielded, with the split it belongs to.

        Returns:
            ``{"epoch", "world_size", "rank", "num_workers", "loader"}``: the last is
            ``StatefulDataLoader``'s state (every reader's state inside).
        """
        return {
            "epoch": self.stream.epoch,
            "world_size": self.stream.world_size,
            "rank": self.stream.rank,
            "num_workers": self.num_workers,
            "loader": super().state_dict(),
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Continue from a saved position at the next iteration.

        Args:
            state_dict: a state from :py:meth:`state_dict`.

        Raises:
            StreamLoaderMismatchError: if the state was saved with another number of
                processes or workers, or by another rank.
        """
        self.check_split(state_dict)
        self.stream.set_epoch(int(state_dict["epoch"]))
        super().load_state_dict(dict(state_dict["loader"]))

    def check_split(self, state_dict: Mapping[str, Any]) -> None:
        """Refuse a position saved with another split of the stream.

        Args:
            state_dict: a state from :py:meth:`state_dict`.

        Raises:
            StreamLoaderMismatchError: if the split differs (the message says how).
        """
        saved = (state_dict.get("world_size"), state_dict.get("num_workers"))
        here = (self.stream.world_size, self.num_workers)
        if saved != here or state_dict.get("rank") != self.stream.rank:
            raise StreamLoaderMismatchError(
                f"the stream position was saved by rank {state_dict.get('rank')} of "
                f"{saved[0]} process(es) with {saved[1]} loader worker(s) each, and this is "
                f"rank {self.stream.rank} of {here[0]} with {here[1]}: a stream is split "
                "into one part per process and worker, so a position inside an epoch "
                "only continues on the same split. Resume with the same number of "
                "processes and num_workers (or from a checkpoint at the end of an epoch, "
                "where any split can start the next one)"
            )


__all__ = ["StreamLoader", "StreamLoaderMismatchError"]
