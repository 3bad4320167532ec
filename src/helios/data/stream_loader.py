"""The data loader of a stream: a DataLoader whose batches carry their reader's position.

:py:class:`StreamLoader` is a ``torch.utils.data.DataLoader`` over a
:py:class:`~helios.data.streams.ResumableStream`. Each loader worker is one reader of the
stream; every batch it makes travels to the main process with the reader's position after
it (epoch, samples yielded, the dataset's own ``state_dict()``), and the loader keeps, for
each reader, the position of the last batch it handed out. However far the workers have
read ahead, :py:meth:`StreamLoader.state_dict` is therefore the position right after the
last batch trained on, and restoring it never replays a batch: every reader starts from its
own position, and the readers take turns in the order they had (worker ``w`` of the resumed
loader plays reader ``(w + r) % num_workers``, ``r`` the reader that was next).

The protocol is torchdata's ``StatefulDataLoader``'s: a dataset with ``state_dict()`` and
``load_state_dict()`` is put back where it was (a Hugging Face ``datasets.IterableDataset``
has both). ``StatefulDataLoader`` itself records the state of each worker through a
snapshot protocol (incremental state differences and runtime protocol checks at every batch)
that costs about a tenth of a millisecond per batch here, 7% of the throughput of a plain
``DataLoader`` with 2 workers in ``benchmarks/bench_stream_loader.py``; carrying the
position with the batch costs a few microseconds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
import torch.utils.data as tud
from torch.utils.data._utils import worker as _worker_utils

from .streams import ResumableStream


class StreamLoaderMismatchError(ValueError):
    """A saved stream position that this loader cannot continue from."""


class _WithPosition:
    """A worker's collate function: the batch, and its reader's position after it."""

    def __init__(self, collate_fn: Callable[[list[Any]], Any]) -> None:
        self.collate_fn = collate_fn

    def __call__(self, samples: list[Any]) -> tuple[Any, dict[str, Any]]:
        info = tud.get_worker_info()
        assert info is not None, "only loader workers collate with positions"
        return self.collate_fn(samples), info.dataset.state_dict()  # type: ignore[attr-defined]


def _start_reader(worker_id: int) -> None:
    """Seed a stream worker and make it the reader its turn says (see the module docstring).

    The worker's identity (``get_worker_info().id``) becomes its reader's, for helios and for
    a dataset that splits itself by worker (Hugging Face's does).
    """
    from helios.core import rng

    info = tud.get_worker_info()
    assert info is not None
    rng.seed_rngs(torch.initial_seed() % 2**32, skip_torch=True)
    stream = info.dataset
    rotation = getattr(stream, "rotation", 0)
    if rotation:
        reader = (worker_id + rotation) % info.num_workers
        # WorkerInfo is frozen: the worker's record is replaced (torch keeps it here).
        _worker_utils._worker_info = _worker_utils.WorkerInfo(
            id=reader,
            num_workers=info.num_workers,
            seed=info.seed,
            dataset=stream,
        )


class StreamLoader(tud.DataLoader):
    """Loads the batches of a :py:class:`~helios.data.streams.ResumableStream`.

    See the module docstring. A position saved with another split of the stream (processes
    or workers) is refused: the parts of the stream would not line up.

    Args:
        stream: the stream.
        batch_size: samples per batch.
        num_workers: loader workers, one reader each (0: the main process reads).
        collate_fn: merges samples into a batch (``default_collate`` if ``None``).
        **kwargs: other ``DataLoader`` arguments (``pin_memory``, ``drop_last``,
            ``generator``, ...); ``worker_init_fn`` is the loader's own.
    """

    def __init__(
        self,
        stream: ResumableStream,
        batch_size: int = 1,
        num_workers: int = 0,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        **kwargs: Any,
    ) -> None:
        collate = collate_fn if collate_fn is not None else tud.default_collate
        super().__init__(
            stream,
            batch_size=batch_size,
            num_workers=num_workers,
            collate_fn=_WithPosition(collate) if num_workers else collate,
            worker_init_fn=_start_reader,
            **kwargs,
        )
        self.stream = stream
        self._readers: dict[int, Mapping[str, Any]] = {}
        self._next_reader = 0
        self._loaded: Mapping[str, Any] | None = None

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        """Begin a pass: from the loaded position if there is one, else the epoch's start."""
        loaded, self._loaded = self._loaded, None
        readers: dict[int, Mapping[str, Any]] = {}
        rotation = 0
        if loaded is not None:
            readers = {int(r): state for r, state in loaded["readers"].items()}
            rotation = int(loaded.get("next_reader", 0))
        self._readers, self._next_reader = dict(readers), rotation
        self.stream.prepare_pass(readers, rotation)
        batches = super().__iter__()
        if not self.num_workers:
            return batches  # the main process reads: the stream knows its position
        self.stream.prepare_pass({})  # the workers took their copies
        return self._tracked(batches)

    def _tracked(self, batches: Iterator[tuple[Any, dict[str, Any]]]) -> Iterator[Any]:
        readers, workers = self._readers, self.num_workers
        for batch, position in batches:
            reader = position["reader"]
            readers[reader] = position
            self._next_reader = (reader + 1) % workers
            yield batch

    def state_dict(self) -> dict[str, Any]:
        """Return the position after the last batch yielded, with the split it belongs to.

        Returns:
            ``{"epoch", "world_size", "rank", "num_workers", "next_reader", "readers"}``:
            ``readers`` maps each reader to its position (see
            :py:meth:`ResumableStream.state_dict`).
        """
        workers = self.num_workers
        readers = dict(self._readers) if workers else {0: self.stream.state_dict()}
        return {
            "epoch": self.stream.epoch,
            "world_size": self.stream.world_size,
            "rank": self.stream.rank,
            "num_workers": self.num_workers,
            "next_reader": self._next_reader,
            "readers": readers,
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
        self._loaded = state_dict

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
