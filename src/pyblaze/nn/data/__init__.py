"""Extensions of :py:class:`torch.utils.data.Dataset`, installed by ``import pyblaze.nn``.

Importing :py:mod:`pyblaze.nn` adds two methods to every map-style dataset (``Subset``,
``TensorDataset``, torchvision datasets, your own):

* ``dataset.loader(**kwargs)``: a :py:class:`~torch.utils.data.DataLoader` over the dataset;
* ``dataset.random_split(*fractions, seed=None)``: random disjoint subsets.

This patch of a torch class is deliberate: it is the API of seed 002 (``train_dataset.
loader(batch_size=256)``). Nothing else in torch is patched.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from .noise import NoiseDataset


def loader(self: Dataset, **kwargs: Any) -> DataLoader:
    """Create a data loader for this dataset.

    If the dataset has a ``collate_fn`` attribute, it is used as the loader's
    ``collate_fn`` (it overrides one passed here).

    Args:
        self: the dataset.
        **kwargs: the arguments of :py:class:`torch.utils.data.DataLoader`.

    Returns:
        The data loader.
    """
    collate_fn = getattr(self, "collate_fn", None)
    if collate_fn is not None:
        kwargs["collate_fn"] = collate_fn
    return DataLoader(self, **kwargs)


def random_split(self: Dataset, *fractions: float, seed: int | None = None) -> list[Subset]:
    """Split the dataset randomly into disjoint subsets of the given fractions.

    Every subset but the last gets ``round(fraction * len(dataset))`` items (never more
    than remain); the last one gets the rest, so every item lands in exactly one subset.
    The same ``seed`` always gives the same split; without one, the split is drawn from
    torch's global random generator (so ``torch.manual_seed`` makes it reproducible).

    Example:
        >>> train, val = dataset.random_split(0.8, 0.2)

    Args:
        self: the dataset (it must have a length).
        *fractions: the fraction of the items for each subset; they must sum to 1.
        seed: the seed of the permutation.

    Returns:
        One :py:class:`~torch.utils.data.Subset` per fraction.

    Raises:
        ValueError: if no fraction is given, a fraction is negative or not finite, or they
            do not sum to 1.
        TypeError: if a fraction is not a number or the dataset has no length.
    """
    if not fractions:
        raise ValueError("random_split needs at least one fraction, e.g. (0.8, 0.2)")
    for fraction in fractions:
        if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real):
            raise TypeError(
                f"random_split fractions must be numbers, but received {fraction!r} of "
                f"type {type(fraction).__name__}"
            )
        if not math.isfinite(fraction) or fraction < 0:
            raise ValueError(f"random_split fractions must be in [0, 1], but received {fraction!r}")
    total = float(sum(fractions))
    if not math.isclose(total, 1.0, rel_tol=1e-9, abs_tol=1e-9):
        raise ValueError(
            f"random_split fractions must sum to 1, but {tuple(fractions)} sum to {total}"
        )
    try:
        length = len(self)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            f"random_split needs a dataset with a length, but {type(self).__name__} has none"
        ) from None
    if seed is None:
        seed = int(torch.randint(0, 2**31 - 1, ()).item())
    permutation = np.random.RandomState(seed).permutation(length).tolist()

    subsets: list[Subset] = []
    start = 0
    for fraction in fractions[:-1]:
        size = min(round(fraction * length), length - start)
        subsets.append(Subset(self, permutation[start : start + size]))
        start += size
    subsets.append(Subset(self, permutation[start:]))
    return subsets


def install_dataset_extensions() -> None:
    """Add :py:func:`loader` and :py:func:`random_split` to ``torch.utils.data.Dataset``.

    ``import pyblaze.nn`` calls this; calling it again does nothing new.
    """
    Dataset.loader = loader  # type: ignore[attr-defined]
    Dataset.random_split = random_split  # type: ignore[attr-defined]


__all__ = ["NoiseDataset", "install_dataset_extensions", "loader", "random_split"]
