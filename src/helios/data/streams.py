"""Streams: iterable datasets split among ranks and loader workers, resumed exactly.

A stream is a :py:class:`torch.utils.data.IterableDataset`: a token stream, a folder of
shards read in order, data made on the fly. Helios reads it through a
:py:class:`ResumableStream`, which plays for a stream the part a resumable sampler plays for
map-style data: it knows the epoch, splits the stream and keeps the position.

**The split.** Every reader of the stream (a loader worker, or the main process with
``num_workers=0``) reads one part of it. With ``R`` processes of ``W`` workers each there are
``R * W`` parts; the worker ``w`` of rank ``r`` reads part ``r * W + w``. How it gets only
its part:

* a dataset with a ``select_part(index, count)`` method is told its part before it is
  iterated, and from then on yields only that part (a folder of shards gives each reader
  every ``count``-th shard, say);
* a Hugging Face ``datasets.IterableDataset`` is split among ranks with
  ``datasets.distributed.split_dataset_by_node`` and splits itself among the workers (by
  shards, see its documentation);
* any other dataset is read whole by every reader, each keeping every ``count``-th sample
  from its index on (``index, index + count, ...``): correct for any stream whose order is
  the same in every reader, at the cost of reading it ``count`` times.

No sample is read twice or skipped in an epoch, as long as the stream yields the same
samples in the same order each time it is iterated in an epoch (it may depend on the epoch:
:py:meth:`ResumableStream.set_epoch` calls the dataset's own ``set_epoch``).

**The position.** A reader's state is its epoch, the number of samples it has yielded in the
epoch and, when the dataset has them, the dataset's own ``state_dict()`` (restored with
``load_state_dict()`` before it is iterated again: the stateful protocol of torchdata's
``StatefulDataLoader``). The loader (:py:class:`helios.data.stream_loader.StreamLoader`)
receives each reader's state with each of its batches, so its ``state_dict()`` is the
position after the last batch it handed out, however far its workers have read ahead.
Restoring it never replays batches.

**A stream without state** (no ``state_dict``/``load_state_dict``) cannot be put back where
it was. ``resume="restart"`` (the default) starts the epoch's stream again from its
beginning; ``resume="skip"`` reads and drops the samples the reader had yielded before the
checkpoint (no batches are built; the reading still takes time in proportion to the
position).

**Random streams.** In a loader worker, before each batch, the worker's generators (torch,
``random``, NumPy's legacy one and the helios default NumPy generator) are seeded from the
loader's seed, the epoch, the rank, the worker and the reader's position
(:py:func:`helios.data.seeding.sample_seed`). Random augmentations in the stream are
then the same in a resumed run as in the uninterrupted one. With ``num_workers=0`` the
stream draws from the main process's generators, which every checkpoint holds.
"""

from __future__ import annotations

import dataclasses
import itertools
import sys
import typing
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.utils.data as tud

from .seeding import sample_seed, seed_reader

STREAM_RESUME_CHOICES = ("restart", "skip")
_OWN_ATTRIBUTES = ("dataset", "_pending", "_generator", "_reading", "rotation", "_epoch")
"""What a stream without state does when a run resumes inside an epoch."""


@dataclasses.dataclass(frozen=True)
class StreamPart:
    """The part of a stream one reader reads.

    Attributes:
        index: the part's index, ``rank * num_workers + worker``.
        count: the number of parts, ``world_size * num_workers``.
        rank: the rank of the reader's process.
        world_size: the number of processes.
        worker: the reader among its process's (the loader worker that reads, 0 with
            ``num_workers=0``).
        num_workers: the loader workers per process (at least 1).
    """

    index: int
    count: int
    rank: int
    world_size: int
    worker: int
    num_workers: int


def is_stateful(obj: object) -> bool:
    """Return whether ``obj`` has ``state_dict()`` and ``load_state_dict()``."""
    return callable(getattr(obj, "state_dict", None)) and callable(
        getattr(obj, "load_state_dict", None)
    )


def _is_hugging_face_stream(dataset: object) -> bool:
    """Whether ``dataset`` is a ``datasets.IterableDataset`` (without importing datasets)."""
    module = sys.modules.get("datasets")
    stream_type = getattr(module, "IterableDataset", None) if module is not None else None
    return isinstance(stream_type, type) and isinstance(dataset, stream_type)


def _check_choice(resume: object) -> str:
    if resume not in STREAM_RESUME_CHOICES:
        raise ValueError(
            f"expected stream_resume to be one of {list(STREAM_RESUME_CHOICES)}, but "
            f"received {resume!r}"
        )
    return typing.cast(str, resume)


class ResumableStream(tud.IterableDataset):
    """The stream a helios loader reads: a dataset split, seeded and positioned.

    See the module docstring for the split, the position and the seeding.

    Args:
        dataset: the iterable dataset.
        seed: the base seed of the workers' random streams.
        batch_size: samples per batch (a worker is re-seeded before each batch).
        rank: the rank of this process.
        world_size: the number of processes sharing the stream.
        resume: for a dataset without state, what a run resumed inside an epoch does:
            ``"restart"`` the epoch's stream or ``"skip"`` the samples read before.

    Raises:
        TypeError: if ``dataset`` is not an ``IterableDataset``.
        ValueError: if ``resume`` is not one of the choices, or the rank is out of range.
    """

    def __init__(
        self,
        dataset: tud.IterableDataset,
        seed: int = 0,
        batch_size: int = 1,
        rank: int = 0,
        world_size: int = 1,
        resume: str = "restart",
    ) -> None:
        if not isinstance(dataset, tud.IterableDataset):
            raise TypeError(
                "expected dataset to be a torch.utils.data.IterableDataset, but received "
                f"{type(dataset).__name__}"
            )
        if not 0 <= rank < world_size:
            raise ValueError(f"expected 0 <= rank < world_size, but received {rank}, {world_size}")
        self.resume = _check_choice(resume)
        self.seed, self.batch_size = seed, batch_size
        self.rank, self.world_size = rank, world_size
        if world_size > 1 and _is_hugging_face_stream(dataset):
            from datasets.distributed import split_dataset_by_node

            dataset = split_dataset_by_node(dataset, rank=rank, world_size=world_size)
        self.dataset = dataset
        self._epoch = 0
        self._position = 0
        # Positions loaded for the next pass, by reader; the reader loader worker 0 plays.
        self._pending: dict[int, Mapping[str, Any]] = {}
        self.rotation = 0
        self._reading: Iterator[Any] | None = None
        self._generator: torch.Generator | None = None

    @property
    def epoch(self) -> int:
        """The epoch the next pass reads."""
        return self._epoch

    @property
    def is_stateful(self) -> bool:
        """Whether the dataset can be put back where it was (``state_dict``)."""
        return is_stateful(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch the next pass reads (the dataset's ``set_epoch`` too, if any).

        The attached loader generator is re-seeded with ``seed + epoch + rank * 2**32``.

        Args:
            epoch: the epoch, from 0.
        """
        self._epoch = epoch
        set_epoch = getattr(self.dataset, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)
        if self._generator is not None:
            self._generator.manual_seed(self.seed + epoch + self.rank * 2**32)

    def attach_generator(self, generator: torch.Generator) -> None:
        """Attach the generator of the loader (re-seeded by :py:meth:`set_epoch`)."""
        self._generator = generator
        self.set_epoch(self._epoch)

    def state_dict(self) -> dict[str, Any]:
        """Return the calling reader's position: epoch, samples yielded, the dataset's state.

        Returns:
            ``{"reader", "epoch", "position", "dataset"}`` (``dataset`` is ``None`` for a
            dataset without state).
        """
        reader = self.part().worker
        if self._reading is None and reader in self._pending:
            return dict(self._pending[reader])  # loaded, not yet read from
        dataset_state = self.dataset.state_dict() if self.is_stateful else None  # type: ignore[attr-defined]
        return {
            "reader": reader,
            "epoch": self._epoch,
            "position": self._position,
            "dataset": dataset_state,
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Keep a reader's position for the next pass (applied when it is read from).

        Args:
            state_dict: a state from :py:meth:`state_dict`.
        """
        self._pending[int(state_dict.get("reader", 0))] = state_dict
        self._reading = None

    def prepare_pass(self, readers: Mapping[int, Mapping[str, Any]], rotation: int = 0) -> None:
        """Set the positions the readers of the next pass start from, and their order.

        Args:
            readers: each reader's saved position (a reader without one starts the epoch).
            rotation: the reader that loader worker 0 plays (worker ``w`` plays reader
                ``(w + rotation) % num_workers``), so the loader's round of workers goes
                on with the reader that was next when the position was saved.
        """
        self._pending = {int(reader): state for reader, state in readers.items()}
        self.rotation = rotation
        self._reading = None

    def part(self) -> StreamPart:
        """Return the part of the stream the calling reader reads."""
        info = tud.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return StreamPart(
            index=self.rank * workers + worker,
            count=self.world_size * workers,
            rank=self.rank,
            world_size=self.world_size,
            worker=worker,
            num_workers=workers,
        )

    def __iter__(self) -> ResumableStream:
        """Begin a pass over the epoch (from a loaded position, if one waits).

        The stream is its own iterator: a loader holds one pass at a time, and its state
        is then the iterator's (one object to ask, once per batch).
        """
        self._reading = None
        return self

    def __next__(self) -> Any:
        if self._reading is None:
            self._reading = self._start_pass()
        return next(self._reading)

    def _start_pass(self) -> Iterator[Any]:
        """Open this reader's part of the epoch, where a loaded position says."""
        part, in_worker = self.part(), tud.get_worker_info() is not None
        pending = self._pending.pop(part.worker, None)
        position = 0
        if pending is not None and pending.get("epoch") == self._epoch:
            position = int(pending.get("position", 0))
            if pending.get("dataset") is not None and self.is_stateful:
                self.dataset.load_state_dict(pending["dataset"])  # type: ignore[attr-defined]
        restored = position > 0 and self.is_stateful
        samples = self._read_part(part, resumed=restored)
        drop = 0
        if position and not restored:
            # A stream without state: read it again from the start, dropping (skip) or
            # yielding (restart) what was read before.
            drop, position = (position, 0) if self.resume == "skip" else (0, 0)
        self._position = position
        return self._positioned(samples, part, position, drop, in_worker)

    def _positioned(
        self, samples: Iterator[Any], part: StreamPart, position: int, drop: int, in_worker: bool
    ) -> Iterator[Any]:
        """Yield the reader's samples, seeding a worker before each batch; count them."""
        batch_size = self.batch_size
        seed, epoch, where = self.seed, self._epoch, f"stream/{part.rank}/{part.worker}"
        while True:
            if in_worker and position % batch_size == 0:
                seed_reader(sample_seed(seed, epoch, f"{where}/{position}"))
            try:
                sample = next(samples)
            except StopIteration:
                return
            position += 1
            self._position = position
            if position > drop:
                yield sample

    def _read_part(self, part: StreamPart, resumed: bool) -> Iterator[Any]:
        """Iterate the dataset's samples of one part (see the module docstring)."""
        dataset = self.dataset
        if part.count == 1:
            return iter(dataset)
        select = getattr(dataset, "select_part", None)
        if callable(select):
            select(part.index, part.count)
            return iter(dataset)
        if _is_hugging_face_stream(dataset):
            return iter(dataset)
        # Every reader reads the whole stream and keeps its samples. A restored dataset
        # continues right after this reader's last sample: the next is count - 1 further.
        start = part.count - 1 if resumed else part.index
        return itertools.islice(iter(dataset), start, None, part.count)

    def __getattr__(self, name: str) -> Any:
        # Attributes of the user's dataset stay reachable through ``loader.dataset``.
        if name.startswith("__") or name in _OWN_ATTRIBUTES:
            raise AttributeError(name)
        return getattr(self.dataset, name)


__all__ = [
    "STREAM_RESUME_CHOICES",
    "ResumableStream",
    "StreamPart",
    "is_stateful",
]
