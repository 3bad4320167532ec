"""An endless data set of random noise (PyBlaze 1.1.6 ``pyblaze.nn.data.noise``)."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import IterableDataset

from pyblaze.nn.functional import generate_noise

_NOISE_TYPES = ("normal", "uniform")


class NoiseDataset(IterableDataset):
    """An infinite stream of noise vectors, e.g. the inputs of a GAN's generator.

    Every item is a new draw of :py:func:`pyblaze.nn.functional.generate_noise` with shape
    ``[dimension]`` from the global torch generator (in data loader workers, each worker's
    own seeded generator). The data set has no length: give ``iterations`` to ``fit``,
    ``evaluate`` or ``predict``, or take a fixed number of batches.

    Example:
        .. code-block:: python

            noise = NoiseDataset("normal", 64).loader(batch_size=32)
            batch = next(iter(noise))  # [32, 64]

    Args:
        noise_type: ``"normal"`` or ``"uniform"`` (on ``[-1, 1)``).
        dimension: the size of each noise vector.

    Raises:
        ValueError: for an unknown ``noise_type`` or a ``dimension`` below 1.
    """

    def __init__(self, noise_type: str, dimension: int) -> None:
        if noise_type not in _NOISE_TYPES:
            raise ValueError(
                f"invalid noise_type {noise_type!r}; expected one of {list(_NOISE_TYPES)}"
            )
        if isinstance(dimension, bool) or not isinstance(dimension, int) or dimension < 1:
            raise ValueError(f"dimension must be a positive int, got {dimension!r}")
        self.noise_type = noise_type
        self.dimension = dimension

    def __iter__(self) -> Iterator[torch.Tensor]:
        while True:
            yield generate_noise((self.dimension,), self.noise_type)


__all__ = ["NoiseDataset"]
