"""Samplers that can stop mid-epoch and resume at the exact same batch.

Every sampler here follows one contract, which the trainer relies on for exact resume:

* :py:meth:`set_epoch` selects the order of the epoch. Shuffled orders come from a private
  generator seeded with ``seed + epoch``; the global torch RNG is never touched.
* :py:attr:`start_iter` is the number of *batches* to skip at the start of the next pass.
  The skip is done by slicing the index list (never by iterating) and applies to one pass
  only: ``__iter__`` resets it to 0, so later epochs are complete.
* :py:meth:`state_dict` / :py:meth:`load_state_dict` capture ``{"epoch", "start_iter"}`` as
  plain ints (loadable with ``torch.load(weights_only=True)``).
* ``len(sampler)`` is the full number of indices of an epoch (per rank for the distributed
  sampler); it is not reduced by :py:attr:`start_iter`.

A data loader built by :py:func:`helios.data.create_dataloader` attaches its own
``torch.Generator`` to the sampler (:py:meth:`attach_generator`). :py:meth:`set_epoch`
then re-seeds that generator with ``seed + epoch`` (plus ``rank * 2**32`` for the
distributed sampler, so that ranks do not share worker seeds). The worker seeds the loader
derives from it therefore depend only on the seed, the epoch, the rank and the worker id,
never on where a run was resumed.
"""

from __future__ import annotations

import math
import typing
from collections.abc import Iterator, Sized
from typing import Any

import torch
import torch.utils.data as tud

from helios.core.utils import Registry

SAMPLER_REGISTRY = Registry("sampler")
"""Registry of the resumable samplers, used by :py:func:`create_sampler`."""


def create_sampler(type_name: str, *args: Any, **kwargs: Any) -> ResumableSamplerType:
    """Create a sampler registered in :py:data:`SAMPLER_REGISTRY`."""
    return SAMPLER_REGISTRY.create(type_name, *args, **kwargs)


def _check_non_negative_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"expected {name} to be an int, but received {value!r} of type {type(value).__name__}"
        )
    if value < 0:
        raise ValueError(f"expected {name} to be >= 0, but received {value}")
    return value


def _check_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"expected {name} to be an int, but received {value!r} of type {type(value).__name__}"
        )
    return value


def _check_batch_size(batch_size: object) -> int:
    batch_size = _check_non_negative_int("batch_size", batch_size)
    if batch_size < 1:
        raise ValueError(f"expected batch_size to be >= 1, but received {batch_size}")
    return batch_size


class _ResumableMixin:
    """State and behaviour shared by every resumable sampler (see the module docstring)."""

    _epoch: int
    _start_iter: int
    _batch_size: int
    _seed: int
    _loader_generator: torch.Generator | None
    _generator_seed: int

    def _init_resumable(self, batch_size: int, seed: int) -> None:
        self._batch_size = _check_batch_size(batch_size)
        self._seed = _check_int("seed", seed)
        self._epoch = 0
        self._start_iter = 0
        self._global_start = 0
        self._loader_generator = None
        self._generator_seed = self._seed

    @property
    def epoch(self) -> int:
        """The epoch whose order the next pass yields."""
        return self._epoch

    @epoch.setter
    def epoch(self, epoch: int) -> None:
        self._epoch = _check_non_negative_int("epoch", epoch)

    @property
    def start_iter(self) -> int:
        """Number of batches skipped at the start of the next pass (then reset to 0)."""
        return self._start_iter

    @start_iter.setter
    def start_iter(self, start_iter: int) -> None:
        self._start_iter = _check_non_negative_int("start_iter", start_iter)

    @property
    def global_start(self) -> int:
        """Samples of the epoch's global order to skip in the next pass (then reset to 0).

        The global order is the one every rank's shard is cut from; the first
        ``global_start`` samples of it were consumed, by all ranks together, before a run
        stopped. A run resumed on another number of processes shards the rest among its
        own ranks. It takes precedence over :py:attr:`start_iter`.
        """
        return self._global_start

    @global_start.setter
    def global_start(self, global_start: int) -> None:
        self._global_start = _check_non_negative_int("global_start", global_start)

    @property
    def batch_size(self) -> int:
        """The batch size used to turn :py:attr:`start_iter` into a number of indices."""
        return self._batch_size

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next pass yields.

        :py:attr:`start_iter` is left as it is. The attached loader generator (if any) is
        re-seeded (see :py:meth:`attach_generator`).

        Args:
            epoch: the epoch number (>= 0).

        Raises:
            TypeError: if ``epoch`` is not an int.
            ValueError: if ``epoch`` is negative.
        """
        self.epoch = epoch
        self._reseed_loader_generator()

    def attach_generator(self, generator: torch.Generator, seed: int | None = None) -> None:
        """Attach the generator of the data loader that draws from this sampler.

        The generator is re-seeded with ``seed + epoch`` (plus ``rank * 2**32`` for the
        distributed sampler) now and on every :py:meth:`set_epoch`.

        Args:
            generator: the ``torch.Generator`` given to the data loader.
            seed: the base seed of the generator; defaults to the sampler's seed.

        Raises:
            TypeError: if ``generator`` is not a ``torch.Generator`` or ``seed`` is not an
                int.
        """
        if not isinstance(generator, torch.Generator):
            raise TypeError(
                "expected generator to be a torch.Generator, but received "
                f"{type(generator).__name__}"
            )
        self._generator_seed = self._seed if seed is None else _check_int("seed", seed)
        self._loader_generator = generator
        self._reseed_loader_generator()

    def state_dict(self) -> dict[str, int]:
        """Return the position of the sampler.

        Returns:
            ``{"epoch": int, "start_iter": int}``, and ``"global_start"`` when it is set.
        """
        state = {"epoch": self._epoch, "start_iter": self._start_iter}
        if self._global_start:
            state["global_start"] = self._global_start
        return state

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Restore a position saved by :py:meth:`state_dict`.

        Args:
            state_dict: the saved state.

        Raises:
            KeyError: if ``"epoch"`` or ``"start_iter"`` is missing.
        """
        missing = sorted({"epoch", "start_iter"} - set(state_dict))
        if missing:
            raise KeyError(f"sampler state is missing {missing}; it has {sorted(state_dict)}")
        self.set_epoch(state_dict["epoch"])
        self.start_iter = state_dict["start_iter"]
        self.global_start = state_dict.get("global_start", 0)

    def _generator_offset(self) -> int:
        return 0

    def _reseed_loader_generator(self) -> None:
        if self._loader_generator is not None:
            seed = self._generator_seed + self._epoch + self._generator_offset()
            self._loader_generator.manual_seed(seed)

    def _adjust_to_start_iter(self, indices: list[int]) -> list[int]:
        """Drop the samples already consumed from ``indices``; reset the skip counters."""
        skip = self._global_start or self._start_iter * self._batch_size
        self._start_iter = self._global_start = 0
        return indices[skip:]


class ResumableSampler(_ResumableMixin, tud.Sampler[int]):
    """Base class of the single-process resumable samplers.

    A subclass implements ``__len__`` and ``__iter__``; ``__iter__`` builds the full index
    list of :py:attr:`epoch` and returns ``iter(self._adjust_to_start_iter(indices))``.

    Args:
        batch_size: the batch size of the loader; :py:attr:`start_iter` counts batches.

    Raises:
        TypeError: if ``batch_size`` is not an int.
        ValueError: if ``batch_size`` < 1.
    """

    def __init__(self, batch_size: int = 1) -> None:
        self._init_resumable(batch_size, seed=0)


def _check_sized(name: str, value: object) -> Sized:
    if not isinstance(value, Sized):
        raise TypeError(
            f"expected {name} to have a length (a map-style dataset), but received "
            f"{type(value).__name__}"
        )
    return value


@SAMPLER_REGISTRY.register
class ResumableRandomSampler(ResumableSampler):
    """Shuffle the data with a new permutation per epoch, seeded with ``seed + epoch``.

    Args:
        data_source: the dataset to sample from.
        seed: the base seed of the permutations.
        batch_size: the batch size of the loader.

    Raises:
        TypeError: if ``data_source`` has no length, or ``seed``/``batch_size`` is not an
            int.
        ValueError: if ``batch_size`` < 1.
    """

    def __init__(self, data_source: Sized, seed: int = 0, batch_size: int = 1) -> None:
        super().__init__(batch_size)
        self._seed = _check_int("seed", seed)
        self._generator_seed = self._seed
        self._data_source = _check_sized("data_source", data_source)

    def __len__(self) -> int:
        return len(self._data_source)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator()
        generator.manual_seed(self._seed + self._epoch)
        indices = torch.randperm(len(self._data_source), generator=generator).tolist()
        return iter(self._adjust_to_start_iter(indices))


@SAMPLER_REGISTRY.register
class ResumableSequentialSampler(ResumableSampler):
    """Yield ``0 .. n-1`` in order.

    Args:
        data_source: the dataset to sample from.
        batch_size: the batch size of the loader.

    Raises:
        TypeError: if ``data_source`` has no length or ``batch_size`` is not an int.
        ValueError: if ``batch_size`` < 1.
    """

    def __init__(self, data_source: Sized, batch_size: int = 1) -> None:
        super().__init__(batch_size)
        self._data_source = _check_sized("data_source", data_source)

    def __len__(self) -> int:
        return len(self._data_source)

    def __iter__(self) -> Iterator[int]:
        return iter(self._adjust_to_start_iter(list(range(len(self._data_source)))))


@SAMPLER_REGISTRY.register
class ResumableReplacementSampler(ResumableSampler):
    """Draw ``num_samples`` indices per epoch uniformly, with replacement (minGPT's sampling).

    minGPT trains on ``RandomSampler(dataset, replacement=True, num_samples=int(1e10))``: an
    endless run of random indices, where each one may come up any number of times. Here the
    draws come in blocks of :py:attr:`BLOCK` indices, block ``b`` of epoch ``e`` drawn by a
    generator seeded from ``(seed, e, rank, b)`` (:py:func:`helios.data.seeding.sample_seed`),
    so a resume at any position draws one block and slices it: its cost does not grow with
    the position, even ten billion samples in. The global torch RNG is never touched. In a
    distributed run each rank draws its own indices (from its rank).

    Args:
        data_source: the dataset to sample from.
        num_samples: the indices drawn per epoch (defaults to the dataset's length).
        seed: the base seed of the draws.
        batch_size: the batch size of the loader.
        rank: whose draws these are; defaults to the rank in the active process group (0
            without one).

    Raises:
        TypeError: if ``data_source`` has no length, or an argument is not an int.
        ValueError: if ``num_samples`` or ``batch_size`` < 1, or the dataset is empty.
    """

    BLOCK = 2**16
    """The indices drawn by one generator."""

    def __init__(
        self,
        data_source: Sized,
        num_samples: int | None = None,
        seed: int = 0,
        batch_size: int = 1,
        rank: int | None = None,
    ) -> None:
        super().__init__(batch_size)
        self._seed = _check_int("seed", seed)
        self._generator_seed = self._seed
        self._data_source = _check_sized("data_source", data_source)
        if rank is None:
            active = torch.distributed.is_available() and torch.distributed.is_initialized()
            rank = torch.distributed.get_rank() if active else 0
        self._rank = _check_non_negative_int("rank", rank)
        if not len(data_source):
            raise ValueError("expected data_source to be non-empty, but it has length 0")
        count = len(data_source) if num_samples is None else num_samples
        self._num_samples = _check_non_negative_int("num_samples", count)
        if self._num_samples < 1:
            raise ValueError(f"expected num_samples to be >= 1, but received {num_samples}")

    @property
    def num_samples(self) -> int:
        """The indices drawn per epoch."""
        return self._num_samples

    def __len__(self) -> int:
        return self._num_samples

    def _generator_offset(self) -> int:
        return self._rank * 2**32

    def __iter__(self) -> Iterator[int]:
        start = self._global_start or self._start_iter * self._batch_size
        self._start_iter = self._global_start = 0
        return self._draws(min(start, self._num_samples))

    def _draws(self, start: int) -> Iterator[int]:
        """Yield the epoch's indices from position ``start`` on, one block at a time."""
        from .seeding import sample_seed

        size, total = len(self._data_source), self._num_samples
        block, offset = divmod(start, self.BLOCK)
        while block * self.BLOCK < total:
            generator = torch.Generator()
            where = f"replacement/{self._rank}/{block}"
            generator.manual_seed(sample_seed(self._seed, self._epoch, where))
            count = min(self.BLOCK, total - block * self.BLOCK)
            draws = torch.randint(size, (count,), generator=generator)
            yield from draws[offset:].tolist()
            block, offset = block + 1, 0


@SAMPLER_REGISTRY.register
class ResumableDistributedSampler(_ResumableMixin, tud.DistributedSampler):
    """A :py:class:`torch.utils.data.DistributedSampler` that can resume mid-epoch.

    Each rank gets a disjoint shard of ``len(sampler)`` indices. Without ``drop_last`` the
    index list is padded by repeating its start so that every rank gets the same number;
    with ``drop_last`` the tail is dropped instead. The shuffled order changes with
    :py:meth:`set_epoch`. ``num_replicas`` and ``rank`` default to the values of the active
    process group. An attached loader generator is seeded with
    ``seed + epoch + rank * 2**32``, so loader workers on different ranks get different
    seeds.

    Args:
        dataset: the dataset to sample from.
        num_replicas: number of processes taking part.
        rank: rank of this process.
        shuffle: shuffle the indices (seeded with ``seed + epoch``).
        seed: the base seed, identical on every rank.
        drop_last: drop the tail instead of padding.
        batch_size: the batch size of the loader.

    Raises:
        TypeError: if ``dataset`` has no length, or ``seed``/``batch_size`` is not an int.
        ValueError: if ``batch_size`` < 1 or ``rank`` is not in ``[0, num_replicas)``.
        RuntimeError: if ``num_replicas``/``rank`` are omitted and no process group is
            active.
    """

    def __init__(
        self,
        dataset: tud.Dataset,
        num_replicas: int | None = None,
        rank: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        batch_size: int = 1,
    ) -> None:
        _check_sized("dataset", dataset)
        self._init_resumable(batch_size, seed)
        super().__init__(
            dataset,
            num_replicas=num_replicas,
            rank=rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
        )

    def _generator_offset(self) -> int:
        return self.rank * 2**32

    def __iter__(self) -> Iterator[int]:
        if self._global_start:
            return iter(self._rest_of_global_order())
        # The parent builds the shard for ``self.epoch`` (our property) with its own
        # generator, so the global RNG is untouched.
        indices = list(super().__iter__())
        return iter(self._adjust_to_start_iter(indices))

    def _rest_of_global_order(self) -> list[int]:
        """This rank's shard of the samples of the epoch after :py:attr:`global_start`."""
        size = len(typing.cast(Sized, self.dataset))
        if self.shuffle:
            generator = torch.Generator()
            generator.manual_seed(self.seed + self.epoch)
            order = torch.randperm(size, generator=generator).tolist()
        else:
            order = list(range(size))
        rest = order[self._global_start :]
        self._start_iter = self._global_start = 0
        replicas = self.num_replicas
        if self.drop_last:
            rest = rest[: len(rest) - len(rest) % replicas]
        elif rest and len(rest) % replicas:
            padding = replicas - len(rest) % replicas
            rest += (rest * math.ceil(padding / len(rest)))[:padding]
        return rest[self.rank :: replicas]


ResumableSamplerType = ResumableSampler | ResumableDistributedSampler
"""Any sampler accepted by :py:func:`helios.data.create_dataloader`."""


def place_sampler(sampler: object, epoch: int, start_iter: int = 0, global_start: int = 0) -> None:
    """Position a sampler at batch ``start_iter`` of epoch ``epoch`` for its next pass.

    A resumable sampler is positioned through its own :py:meth:`load_state_dict`; a sampler
    that only knows epochs (``torch``'s ``DistributedSampler``) gets :py:meth:`set_epoch`;
    any other sampler is left alone.

    Args:
        sampler: the sampler of a training loader.
        epoch: the epoch (counted from 0).
        start_iter: the batches of that epoch already consumed.
        global_start: the samples of that epoch's global order already consumed by all
            ranks together (when set, ``start_iter`` is ignored; see
            :py:attr:`ResumableDistributedSampler.global_start`).
    """
    if isinstance(sampler, _ResumableMixin):
        position = {"epoch": epoch, "start_iter": start_iter, "global_start": global_start}
        sampler.load_state_dict(position)
    elif callable(set_epoch := getattr(sampler, "set_epoch", None)):
        set_epoch(epoch)
