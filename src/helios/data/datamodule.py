"""Datasets, data loaders and the :py:class:`DataModule` that owns them."""

from __future__ import annotations

import abc
import copy
import dataclasses
import enum
import inspect
import typing
from collections.abc import Callable, Sized
from typing import Any

import torch
import torch.utils.data as tud

from helios.core import rng
from helios.core.utils import Registry, get_from_optional

from .samplers import (
    ResumableDistributedSampler,
    ResumableRandomSampler,
    ResumableSamplerType,
    ResumableSequentialSampler,
)
from .seeding import sample_seed
from .streams import STREAM_RESUME_CHOICES, ResumableStream

if typing.TYPE_CHECKING:
    from helios.core.placement import RunTrainer

_DEFAULT_SEED = rng.get_default_seed()

DATASET_REGISTRY = Registry("dataset")
"""Registry of datasets, used by :py:func:`create_dataset`."""

COLLATE_FN_REGISTRY = Registry("collate_fn")
"""Registry of collate functions, used by :py:func:`create_collate_fn`."""
COLLATE_FN_REGISTRY.register(tud.default_collate)


def create_dataset(type_name: str, *args: Any, **kwargs: Any) -> tud.Dataset:
    """Create a dataset registered in :py:data:`DATASET_REGISTRY`."""
    return DATASET_REGISTRY.create(type_name, *args, **kwargs)


def create_collate_fn(type_name: str, *args: Any, **kwargs: Any) -> Callable:
    """Get a collate function from :py:data:`COLLATE_FN_REGISTRY`.

    A registered class is instantiated with the arguments. A registered plain function is
    returned as-is when no arguments are given (so ``create_collate_fn("default_collate")``
    returns :py:func:`torch.utils.data.default_collate`); with arguments it is treated as a
    factory and called with them.

    Args:
        type_name: the registered name of the collate function.
        *args: positional arguments for the class or factory.
        **kwargs: keyword arguments for the class or factory.

    Returns:
        The collate function.

    Raises:
        KeyError: if nothing is registered under ``type_name``.
    """
    entry = COLLATE_FN_REGISTRY.get(type_name)
    if not inspect.isclass(entry) and not args and not kwargs:
        return entry
    return entry(*args, **kwargs)


class DatasetSplit(enum.Enum):
    """The split a dataset belongs to."""

    TRAIN = 0
    VALID = 1
    TEST = 2

    @staticmethod
    def from_str(label: str) -> DatasetSplit:
        """Convert ``"train"``, ``"valid"`` or ``"test"`` to a split.

        Args:
            label: the name of the split.

        Returns:
            The split.

        Raises:
            ValueError: for any other label.
        """
        splits = {
            "train": DatasetSplit.TRAIN,
            "valid": DatasetSplit.VALID,
            "test": DatasetSplit.TEST,
        }
        if label not in splits:
            raise ValueError(
                "invalid dataset split. Expected one of 'train', 'test', or 'valid', but "
                f"received '{label}'"
            )
        return splits[label]


def _seed_worker(worker_id: int) -> None:
    """Seed Python and NumPy (legacy and helios default RNG) in a loader worker.

    The loader has already seeded torch in the worker with ``base_seed + worker_id``
    (``torch.initial_seed()``), where ``base_seed`` comes from the loader's generator.
    Re-seeding torch with a truncated value would change it, so only the others are seeded.
    """
    rng.seed_rngs(torch.initial_seed() % 2**32, skip_torch=True)


class _SeededSamples(tud.Dataset):
    """Loads every sample in a worker process with random streams of its own.

    In a loader worker, torch's, Python's and NumPy's generators (the legacy one and the
    helios default) are seeded from :py:func:`sample_seed` (the loader's seed, the epoch and
    the sample's index) right before the sample is loaded. Random augmentations then depend
    neither on the worker that loads a sample nor on where a run was resumed, and a run
    killed mid-epoch resumes with the same augmented samples. In the main process
    (``num_workers=0``) nothing is re-seeded: the main process's generators are part of
    every checkpoint.

    Args:
        dataset: the wrapped dataset.
        sampler: the loader's sampler (for the epoch).
        seed: the loader's base seed.
    """

    def __init__(self, dataset: tud.Dataset, sampler: ResumableSamplerType, seed: int) -> None:
        self.dataset = dataset
        self._sampler = sampler
        self._seed = seed

    def __len__(self) -> int:
        return len(typing.cast(Sized, self.dataset))

    def __getitem__(self, index: Any) -> Any:
        if tud.get_worker_info() is not None:
            seed = sample_seed(self._seed, self._sampler.epoch, index)
            torch.manual_seed(seed)
            rng.seed_rngs(seed, skip_torch=True)
        return self.dataset[index]

    def __getattr__(self, name: str) -> Any:
        # Attributes of the user's dataset stay reachable through ``loader.dataset``.
        if name.startswith("__") or name in ("dataset", "_sampler", "_seed"):
            raise AttributeError(name)
        return getattr(self.dataset, name)


def _check_int(name: str, value: object, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"expected {name} to be an int, but received {value!r} of type {type(value).__name__}"
        )
    if minimum is not None and value < minimum:
        raise ValueError(f"expected {name} to be >= {minimum}, but received {value}")
    return value


def _check_loader_args(
    random_seed: int,
    batch_size: int,
    num_workers: int,
    sampler: ResumableSamplerType | None,
    collate_fn: Callable | None,
) -> None:
    _check_int("random_seed", random_seed)
    _check_int("batch_size", batch_size, minimum=1)
    _check_int("num_workers", num_workers, minimum=0)
    if sampler is not None and not isinstance(sampler, typing.get_args(ResumableSamplerType)):
        raise TypeError(
            "expected sampler to derive from one of ResumableSampler or "
            f"ResumableDistributedSampler, but received {type(sampler).__name__}"
        )
    if sampler is not None and sampler.batch_size != batch_size:
        raise ValueError(
            f"expected sampler.batch_size ({sampler.batch_size}) to equal batch_size "
            f"({batch_size}), so that sampler.start_iter counts the loader's batches"
        )
    if collate_fn is not None and not callable(collate_fn):
        raise TypeError(
            f"expected collate_fn to be callable or None, but received {type(collate_fn).__name__}"
        )


def _check_dataset(dataset: object) -> None:
    if isinstance(dataset, tud.IterableDataset):
        return
    if not isinstance(dataset, Sized):
        raise TypeError(
            "expected dataset to be a map-style dataset with a length or a "
            f"torch.utils.data.IterableDataset, but received {type(dataset).__name__}"
        )
    if len(dataset) == 0:
        raise ValueError(
            f"expected dataset to be non-empty, but {type(dataset).__name__} has length 0"
        )


def _check_stream_args(
    dataset: object, shuffle: bool, sampler: object, stream_resume: object
) -> None:
    if stream_resume not in STREAM_RESUME_CHOICES:
        raise ValueError(
            f"expected stream_resume to be one of {list(STREAM_RESUME_CHOICES)}, but "
            f"received {stream_resume!r}"
        )
    if not isinstance(dataset, tud.IterableDataset):
        return
    if shuffle:
        raise ValueError(
            f"shuffle=True cannot shuffle {type(dataset).__name__}, an IterableDataset: a "
            "stream yields its samples in its own order. Shuffle inside the stream (its "
            "shard order by epoch, a shuffle buffer) and pass shuffle=False"
        )
    if sampler is not None:
        raise ValueError(
            f"a sampler cannot draw from {type(dataset).__name__}, an IterableDataset: a "
            "stream has no indices. Pass sampler=None"
        )


def create_dataloader(
    dataset: tud.Dataset,
    random_seed: int = _DEFAULT_SEED,
    batch_size: int = 1,
    shuffle: bool = False,
    num_workers: int = 0,
    pin_memory: bool = True,
    drop_last: bool = False,
    debug_mode: bool = False,
    is_distributed: bool = False,
    sampler: ResumableSamplerType | None = None,
    collate_fn: Callable | None = None,
    stream_resume: str = "restart",
) -> tuple[tud.DataLoader, ResumableSamplerType | ResumableStream]:
    """Create a data loader and the resumable sampler that drives it.

    An iterable dataset (a stream) gets a :py:class:`~helios.data.stream_loader.StreamLoader`
    and the :py:class:`~helios.data.streams.ResumableStream` that drives it instead: see
    :py:mod:`helios.data.streams` for how it is split among ranks (``is_distributed``) and
    workers, resumed and seeded.

    Without a ``sampler``, one is chosen: :py:class:`ResumableDistributedSampler` when
    ``is_distributed`` (shuffled if ``shuffle``), else :py:class:`ResumableRandomSampler`
    when ``shuffle``, else :py:class:`ResumableSequentialSampler`. The sampler gets the
    loader's batch size, so its ``start_iter`` always counts batches.

    The loader owns a dedicated ``torch.Generator`` attached to the sampler, so iterating it
    never consumes the global torch RNG, and ``sampler.set_epoch(e)`` re-seeds it with
    ``random_seed + e`` (plus ``rank * 2**32`` when distributed): worker seeds depend only on
    the seed, the epoch, the rank and the worker id, not on where a run was resumed.
    Each worker seeds ``random``, NumPy's legacy RNG and the helios default NumPy RNG from
    ``torch.initial_seed()``, and then every sample it loads from (``random_seed``, epoch,
    index) (see :py:func:`sample_seed`), so random augmentations in ``__getitem__`` are the
    same whatever the number of workers and wherever a run resumed. ``pin_memory`` only
    takes effect when CUDA is available.

    Typical use::

        loader, sampler = create_dataloader(dataset, batch_size=4, shuffle=True)
        for epoch in range(2):
            sampler.set_epoch(epoch)
            for batch in loader:
                ...

    Args:
        dataset: the map-style dataset.
        random_seed: the base seed of the shuffling and of the workers.
        batch_size: samples per batch.
        shuffle: shuffle the data every epoch.
        num_workers: number of worker processes (0 loads in the main process).
        pin_memory: pin the batches in memory (only when CUDA is available).
        drop_last: drop the last incomplete batch (and, for the distributed sampler, the
            tail that does not divide evenly among ranks).
        debug_mode: force ``num_workers=0``.
        is_distributed: shard the data among the ranks of the process group.
        sampler: a resumable sampler to use instead of the default choice.
        collate_fn: the function that merges samples into a batch.
        stream_resume: for a stream without ``state_dict()``, what a run resumed inside
            an epoch does: ``"restart"`` the epoch's stream or ``"skip"`` the samples read
            before (see :py:mod:`helios.data.streams`).

    Returns:
        The data loader and its sampler (or its stream).

    Raises:
        TypeError: if ``dataset`` is neither map-style with a length nor iterable,
            ``sampler`` is not a resumable sampler, ``collate_fn`` is not callable, or an
            integer argument is not an int.
        ValueError: if ``dataset`` is empty, ``batch_size`` < 1, ``num_workers`` < 0,
            ``sampler.batch_size`` differs from ``batch_size``, ``stream_resume`` is not a
            choice, or a stream gets ``shuffle=True`` or a sampler.
    """
    _check_dataset(dataset)
    _check_loader_args(random_seed, batch_size, num_workers, sampler, collate_fn)
    _check_stream_args(dataset, shuffle, sampler, stream_resume)
    num_workers = 0 if debug_mode else num_workers
    if isinstance(dataset, tud.IterableDataset):
        return _create_stream_loader(
            dataset, random_seed, batch_size, num_workers, pin_memory, drop_last,
            is_distributed, collate_fn, stream_resume,
        )  # fmt: skip

    if sampler is None:
        if is_distributed:
            sampler = ResumableDistributedSampler(
                dataset,
                shuffle=shuffle,
                drop_last=drop_last,
                seed=random_seed,
                batch_size=batch_size,
            )
        elif shuffle:
            sampler = ResumableRandomSampler(
                typing.cast(Sized, dataset), seed=random_seed, batch_size=batch_size
            )
        else:
            sampler = ResumableSequentialSampler(typing.cast(Sized, dataset), batch_size=batch_size)

    generator = torch.Generator()
    sampler.attach_generator(generator, seed=random_seed)
    loader = tud.DataLoader(
        _SeededSamples(dataset, sampler, random_seed) if num_workers else dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=pin_memory and torch.cuda.is_available(),
        drop_last=drop_last,
        sampler=sampler,
        worker_init_fn=_seed_worker,
        collate_fn=collate_fn,
        generator=generator,
    )
    return loader, sampler


def _create_stream_loader(
    dataset: tud.IterableDataset,
    random_seed: int,
    batch_size: int,
    num_workers: int,
    pin_memory: bool,
    drop_last: bool,
    is_distributed: bool,
    collate_fn: Callable | None,
    stream_resume: str,
) -> tuple[tud.DataLoader, ResumableStream]:
    """The loader of a stream and the stream that drives it (see create_dataloader)."""
    from .stream_loader import StreamLoader

    rank, world_size = 0, 1
    if is_distributed:
        if not torch.distributed.is_initialized():
            raise RuntimeError(
                "is_distributed=True splits the stream among the ranks of the process "
                "group, but no process group is initialised"
            )
        rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
    stream = ResumableStream(dataset, random_seed, batch_size, rank, world_size, stream_resume)
    generator = torch.Generator()
    stream.attach_generator(generator)
    loader = StreamLoader(
        stream,
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=pin_memory and torch.cuda.is_available(),
        drop_last=drop_last,
        collate_fn=collate_fn,
        generator=generator,
    )
    return loader, stream


@dataclasses.dataclass
class DataLoaderParams:
    """The settings of a data loader; see :py:func:`create_dataloader`.

    ``is_distributed=None`` means "follow the data module" (set by the trainer).

    Args:
        random_seed: the base seed of the shuffling and of the workers.
        batch_size: samples per batch.
        shuffle: shuffle the data every epoch.
        num_workers: number of worker processes.
        pin_memory: pin the batches in memory (only when CUDA is available).
        drop_last: drop the last incomplete batch.
        debug_mode: force ``num_workers=0``.
        is_distributed: shard the data among ranks; ``None`` follows the data module.
        sampler: a resumable sampler to use instead of the default choice.
        collate_fn: the function that merges samples into a batch.
        stream_resume: for a stream without ``state_dict()``, what a run resumed inside
            an epoch does: ``"restart"`` the epoch's stream or ``"skip"`` the samples read
            before (see :py:mod:`helios.data.streams`).
    """

    random_seed: int = _DEFAULT_SEED
    batch_size: int = 1
    shuffle: bool = False
    num_workers: int = 0
    pin_memory: bool = True
    drop_last: bool = False
    debug_mode: bool = False
    is_distributed: bool | None = None
    sampler: ResumableSamplerType | None = None
    collate_fn: Callable | None = None
    stream_resume: str = "restart"

    def to_dict(self) -> dict[str, Any]:
        """Return a shallow ``{field: value}`` table.

        Returns:
            The table of settings.
        """
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, table: dict[str, Any]) -> DataLoaderParams:
        """Build the settings from a table; missing keys keep their defaults.

        Args:
            table: ``{field: value}``.

        Returns:
            The settings.

        Raises:
            ValueError: if the table has keys that are not fields.
        """
        names = [field.name for field in dataclasses.fields(cls)]
        unknown = sorted(key for key in table if key not in names)
        if unknown:
            raise ValueError(
                f"unknown DataLoaderParams keys {unknown} in table. Expected some of {names}"
            )
        return cls(**table)


@dataclasses.dataclass
class Dataset:
    """A dataset together with the settings of its data loader.

    Args:
        dataset: the torch dataset.
        params: the loader settings.
    """

    dataset: tud.Dataset
    params: DataLoaderParams

    def dict(self) -> dict[str, Any]:
        """Return the loader settings plus ``"dataset"``, ready for ``create_dataloader``.

        Returns:
            The keyword arguments of :py:func:`create_dataloader`.
        """
        out = self.params.to_dict()
        out["dataset"] = self.dataset
        return out


class DataModule(abc.ABC):
    """Owns the datasets of a run and builds their data loaders.

    Subclasses implement :py:meth:`setup`, which assigns ``self._train_dataset``,
    ``self._valid_dataset`` and/or ``self._test_dataset`` with :py:meth:`_create_dataset`.
    :py:meth:`prepare_data` (download, unpack, ...) runs once in the main process before any
    distributed process is started.

    The trainer calls :py:meth:`train_dataloader` once per fit and reuses the returned
    loader and sampler for every epoch (``sampler.set_epoch(e)`` before each one).
    """

    # The model's default state skips a data module it holds: data has no training state
    # (helios.model.default_state).
    _state_kept_apart: typing.ClassVar[bool] = True

    def __init__(self) -> None:
        self._is_distributed = False
        self._train_dataset: Dataset | None = None
        self._valid_dataset: Dataset | None = None
        self._test_dataset: Dataset | None = None
        self._trainer: RunTrainer | None = None
        self._run_seed: int | None = None

    @property
    def run_seed(self) -> int | None:
        """The run's seed, for the loaders whose ``random_seed`` is left at its default.

        The trainer sets it to its ``random_seed`` (:py:class:`helios.trainer.Trainer`), so
        that the seed of a run also changes the order the loaders shuffle in: a split whose
        :py:class:`DataLoaderParams` keep the default ``random_seed`` (6691) is shuffled by
        the run's seed, a split with a seed of its own keeps it. With the default run seed
        (6691) nothing changes. ``None`` (a checkpoint written before this rule, resumed
        with the order it had): every split uses its ``DataLoaderParams`` seed.
        """
        return getattr(self, "_run_seed", None)

    @run_seed.setter
    def run_seed(self, seed: int | None) -> None:
        self._run_seed = seed

    @property
    def is_distributed(self) -> bool:
        """Whether the loaders shard data among ranks (when a split does not say)."""
        return self._is_distributed

    @is_distributed.setter
    def is_distributed(self, is_distributed: bool) -> None:
        self._is_distributed = is_distributed

    @property
    def trainer(self) -> RunTrainer:
        """The trainer running this data module.

        Raises:
            AssertionError: if no trainer has been set.
        """
        return get_from_optional(self._trainer)

    @trainer.setter
    def trainer(self, trainer: RunTrainer) -> None:
        self._trainer = trainer

    @property
    def train_dataset(self) -> tud.Dataset | None:
        """The training dataset, if any."""
        return self._train_dataset.dataset if self._train_dataset is not None else None

    @property
    def valid_dataset(self) -> tud.Dataset | None:
        """The validation dataset, if any."""
        return self._valid_dataset.dataset if self._valid_dataset is not None else None

    @property
    def test_dataset(self) -> tud.Dataset | None:
        """The testing dataset, if any."""
        return self._test_dataset.dataset if self._test_dataset is not None else None

    def prepare_data(self) -> None:  # noqa: B027 - optional hook
        """Download or otherwise prepare the data, once per machine.

        The trainer calls it in the calling process before spawning ranks; under
        ``torchrun`` it runs on local rank 0 of each node while the other ranks wait.
        """

    @abc.abstractmethod
    def setup(self) -> None:
        """Create the datasets with :py:meth:`_create_dataset`."""

    def train_dataloader(
        self,
    ) -> tuple[tud.DataLoader, ResumableSamplerType | ResumableStream] | None:
        """Build the training loader and its sampler.

        Returns:
            ``(loader, sampler)``, or ``None`` when there is no training split.
        """
        if self._train_dataset is None:
            return None
        return self._create_dataloader(self._train_dataset)

    def valid_dataloader(
        self,
    ) -> tuple[tud.DataLoader, ResumableSamplerType | ResumableStream] | None:
        """Build the validation loader and its sampler.

        Returns:
            ``(loader, sampler)``, or ``None`` when there is no validation split.
        """
        if self._valid_dataset is None:
            return None
        return self._create_dataloader(self._valid_dataset)

    def test_dataloader(
        self,
    ) -> tuple[tud.DataLoader, ResumableSamplerType | ResumableStream] | None:
        """Build the testing loader and its sampler.

        Returns:
            ``(loader, sampler)``, or ``None`` when there is no testing split.
        """
        if self._test_dataset is None:
            return None
        return self._create_dataloader(self._test_dataset)

    def teardown(self) -> None:  # noqa: B027 - optional hook
        """Release resources once the run is over."""

    def _create_dataset(
        self, dataset: tud.Dataset, params: DataLoaderParams | dict[str, Any]
    ) -> Dataset:
        """Pair a dataset with a copy of its loader settings.

        The settings are copied, so ``params`` may be changed and reused afterwards. Their
        fields are copied by value, except ``sampler`` and ``collate_fn``, which are shared:
        deep-copying a sampler would also copy the dataset it refers to. The settings are
        checked now, so mistakes surface in :py:meth:`setup`.

        Args:
            dataset: the torch dataset.
            params: the loader settings, or a table for
                :py:meth:`DataLoaderParams.from_dict`.

        Returns:
            The dataset with its settings.

        Raises:
            TypeError: if ``params`` is neither a ``DataLoaderParams`` nor a dict, or a
                setting has the wrong type.
            ValueError: if the dataset is empty, a table has unknown keys or a setting is
                out of range.
        """
        if isinstance(params, DataLoaderParams):
            params = copy.copy(params)
        elif isinstance(params, dict):
            params = DataLoaderParams.from_dict(params)
        else:
            raise TypeError(
                "expected params to be a DataLoaderParams or a dict, but received "
                f"{type(params).__name__}"
            )
        _check_dataset(dataset)
        _check_loader_args(
            params.random_seed,
            params.batch_size,
            params.num_workers,
            params.sampler,
            params.collate_fn,
        )
        _check_stream_args(dataset, params.shuffle, params.sampler, params.stream_resume)
        return Dataset(dataset, params)

    def _create_dataloader(
        self, dataset: Dataset
    ) -> tuple[tud.DataLoader, ResumableSamplerType | ResumableStream]:
        """Build a new loader and sampler for a dataset.

        A split whose ``is_distributed`` is ``None`` follows :py:attr:`is_distributed`; a
        split whose ``random_seed`` is the default takes :py:attr:`run_seed` when it is set.

        Args:
            dataset: the dataset with its settings.

        Returns:
            ``(loader, sampler)``.
        """
        kwargs = dataset.dict()
        if kwargs["is_distributed"] is None:
            kwargs["is_distributed"] = self._is_distributed
        if kwargs["random_seed"] == _DEFAULT_SEED and self.run_seed is not None:
            kwargs["random_seed"] = self.run_seed
        return create_dataloader(**kwargs)


__all__ = [
    "COLLATE_FN_REGISTRY",
    "DATASET_REGISTRY",
    "DataLoaderParams",
    "DataModule",
    "Dataset",
    "DatasetSplit",
    "create_collate_fn",
    "create_dataloader",
    "create_dataset",
    "sample_seed",
]
