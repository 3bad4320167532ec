"""The data of a pyblaze training run as a helios data module, made from PyTorch loaders."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

from torch.utils.data import DataLoader, IterableDataset, RandomSampler, SequentialSampler, Subset
from torch.utils.data import Dataset as TorchDataset

from helios.data import DataLoaderParams, DataModule


def loader_params(
    loader: DataLoader, name: str, seed: int, is_distributed: bool | None
) -> tuple[TorchDataset, DataLoaderParams]:
    """Read the dataset and the helios loader settings of a PyTorch data loader.

    Args:
        loader: the loader.
        name: the argument name, for error messages.
        seed: the seed of the shuffling.
        is_distributed: ``None`` to shard the data among ranks in a distributed run,
            ``False`` to give every rank the whole data set.

    Returns:
        The dataset and the loader settings.

    Raises:
        ValueError: if the loader cannot be rebuilt by helios (custom sampler or batch
            sampler, sampling with replacement, ``worker_init_fn``).
    """
    if loader.batch_size is None:
        raise ValueError(
            f"{name} uses a custom batch_sampler; pass batch_size (and shuffle) to the "
            "DataLoader instead"
        )
    sampler = loader.sampler
    if isinstance(loader.dataset, IterableDataset):
        shuffle = False  # a stream: helios splits it among ranks and workers, no sampler
    elif type(sampler) is RandomSampler:
        if sampler.replacement or sampler._num_samples is not None:
            raise ValueError(
                f"{name} samples with replacement or a custom num_samples; only plain "
                "shuffling (shuffle=True) can be carried over to helios's samplers"
            )
        shuffle = True
    elif type(sampler) is SequentialSampler:
        shuffle = False
    else:
        raise ValueError(
            f"{name} uses a {type(sampler).__name__}; only the default samplers "
            "(shuffle=True or False) can be carried over to helios's resumable samplers"
        )
    if loader.worker_init_fn is not None:
        raise ValueError(
            f"{name} has a worker_init_fn, which helios's loaders replace with their own "
            "worker seeding; remove it (each worker's RNGs are seeded for you)"
        )
    params = DataLoaderParams(
        random_seed=seed,
        batch_size=loader.batch_size,
        shuffle=shuffle,
        num_workers=loader.num_workers,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
        is_distributed=is_distributed,
        collate_fn=loader.collate_fn,
    )
    return loader.dataset, params


class _Prefix(IterableDataset):
    """The first ``count`` samples of a stream (``val_iterations`` batches of it).

    It has no ``select_part``: every reader reads the prefix and keeps its own share, so the
    readers together see each of the ``count`` samples once.
    """

    def __init__(self, stream: IterableDataset, count: int) -> None:
        self.stream, self.count = stream, count

    def __iter__(self) -> Iterator[Any]:
        return itertools.islice(iter(self.stream), self.count)


class LoaderDataModule(DataModule):
    """A helios data module made from PyTorch data loaders.

    The training data is sharded among ranks in a distributed run; the validation data is
    not, so every rank computes the metrics on the whole validation set.

    Args:
        train_loader: the training loader.
        val_loader: the validation loader, if any.
        seed: the seed of the shuffling.
        val_iterations: use only this many validation batches.
    """

    def __init__(
        self,
        train_loader: DataLoader,
        val_loader: DataLoader | None,
        seed: int,
        val_iterations: int | None = None,
    ) -> None:
        super().__init__()
        self._loaders: dict[str, Any] = {}
        self._train_spec = self._create_dataset(
            *loader_params(train_loader, "train_data", seed, is_distributed=None)
        )
        self._valid_spec = None
        if val_loader is not None:
            dataset, params = loader_params(val_loader, "val_data", seed, is_distributed=False)
            if val_iterations is not None and isinstance(dataset, IterableDataset):
                dataset = _Prefix(dataset, val_iterations * params.batch_size)
            elif val_iterations is not None:
                size = min(len(dataset), val_iterations * params.batch_size)  # type: ignore[arg-type]
                dataset = Subset(dataset, range(size))
            self._valid_spec = self._create_dataset(dataset, params)

    def setup(self) -> None:
        """Install the training and validation datasets."""
        self._train_dataset = self._train_spec
        self._valid_dataset = self._valid_spec
        self._loaders = {}

    def train_dataloader(self) -> Any:
        """Build the training loader and its sampler once per run; return the same pair.

        The run asks for it twice: helios to train, the model to count the batches.

        Returns:
            ``(loader, sampler)``.
        """
        return self._once("train", super().train_dataloader)

    def valid_dataloader(self) -> Any:
        """Build the validation loader and its sampler once per run; return the same pair.

        Without validation data the "loader" is an empty list: helios still runs its
        (empty) validation after every epoch, which is where the epoch's metrics go to the
        experiment loggers.

        Returns:
            ``(loader, sampler)``, or ``([], None)`` without validation data.
        """
        if self._valid_spec is None:
            return [], None
        return self._once("valid", super().valid_dataloader)

    def __getstate__(self) -> dict[str, Any]:
        # Spawned processes build their own loaders.
        return {**self.__dict__, "_loaders": {}}

    def _once(self, split: str, build: Callable[[], Any]) -> Any:
        if split not in self._loaders:
            self._loaders[split] = build()
        return self._loaders[split]


__all__ = ["LoaderDataModule", "loader_params"]
