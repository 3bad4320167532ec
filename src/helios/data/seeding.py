"""The seeds of the random streams of data in loader workers.

Per sample of a map-style dataset (:py:mod:`helios.data.datamodule`), per batch of a stream
(:py:mod:`helios.data.streams`).
"""

from __future__ import annotations

import hashlib
import random

import numpy as np
import torch

from helios.core import rng


def sample_seed(seed: int, epoch: int, index: object) -> int:
    """Return the seed of the random streams of one sample in one epoch.

    Args:
        seed: the loader's base seed.
        epoch: the epoch (as the sampler counts it, from 0).
        index: the sample's index in the dataset (for a stream, where the reader is:
            ``"stream/<rank>/<worker>/<position>"``).

    Returns:
        A 63-bit seed that depends only on the three values.
    """
    digest = hashlib.blake2b(f"{seed}/{epoch}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def seed_reader(seed: int) -> None:
    """Seed a loader worker's generators for the next batch of a stream.

    torch's CPU generator, ``random`` and NumPy's legacy generator are seeded with ``seed``;
    the helios default NumPy generator (PCG64) gets a state and increment hashed from it.
    Loader workers do not use CUDA, so only the CPU generator is seeded: it costs a small
    fraction of ``torch.manual_seed``, which visits every accelerator backend.

    Args:
        seed: the seed (from :py:func:`sample_seed`).
    """
    torch.default_generator.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    digest = hashlib.blake2b(seed.to_bytes(8, "little"), digest_size=32).digest()
    state = int.from_bytes(digest[:16], "little")
    increment = int.from_bytes(digest[16:], "little") | 1
    try:
        generator = rng.get_default_numpy_rng().generator
    except RuntimeError:  # a worker started by another loader: no default generator yet
        rng.create_default_numpy_rng(seed)
        generator = rng.get_default_numpy_rng().generator
    generator.bit_generator.state = {
        "bit_generator": "PCG64",
        "state": {"state": state, "inc": increment},
        "has_uint32": 0,
        "uinteger": 0,
    }


__all__ = ["sample_seed", "seed_reader"]
