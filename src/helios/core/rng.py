"""Seeding and state capture for every random number generator a run uses.

Four generators are covered: python's :py:mod:`random`, torch (CPU and, when available, all
CUDA devices), the helios default numpy :py:class:`numpy.random.Generator` and numpy's
legacy global generator (``np.random.*``). The state returned by
:py:func:`get_rng_state_dict` holds only tensors and plain python values, so it can be
stored in a checkpoint and read back with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

_DEFAULT_RNG_SEED = 6691
_REQUIRED_STATE_KEYS = ("torch", "rand", "numpy")

_DEFAULT_NUMPY_RNG: DefaultNumpyRNG | None = None


def get_default_seed() -> int:
    """Return the default seed used by :py:func:`seed_rngs` (6691)."""
    return _DEFAULT_RNG_SEED


class DefaultNumpyRNG:
    """Wrapper around :py:func:`numpy.random.default_rng` (PCG64) with state save/load.

    Args:
        seed: the seed passed to :py:func:`numpy.random.default_rng`. ``None`` draws fresh
            entropy from the OS.
    """

    def __init__(self, seed: int | list[int] | tuple[int, ...] | None = None) -> None:
        self._generator = np.random.default_rng(seed)

    @property
    def generator(self) -> np.random.Generator:
        """The wrapped numpy generator."""
        return self._generator

    def state_dict(self) -> dict[str, Any]:
        """Return the state of the bit generator (a dict of ``str`` and ``int``)."""
        return dict(self._generator.bit_generator.state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the bit generator state in place (the generator object is kept).

        Args:
            state: a state returned by :py:meth:`state_dict`.
        """
        self._generator.bit_generator.state = state


def create_default_numpy_rng(
    seed: int | list[int] | tuple[int, ...] | None = None,
) -> None:
    """Replace the process-wide default numpy generator with a new one.

    Args:
        seed: the seed of the new generator (``None`` for OS entropy).
    """
    global _DEFAULT_NUMPY_RNG
    _DEFAULT_NUMPY_RNG = DefaultNumpyRNG(seed)


def get_default_numpy_rng() -> DefaultNumpyRNG:
    """Return the process-wide default numpy generator.

    Returns:
        The generator created by :py:func:`create_default_numpy_rng` or
        :py:func:`seed_rngs`.

    Raises:
        RuntimeError: if no default generator has been created yet.
    """
    if _DEFAULT_NUMPY_RNG is None:
        raise RuntimeError(
            "default RNG has not been created. Did you forget to call "
            "create_default_numpy_rng (or seed_rngs)?"
        )
    return _DEFAULT_NUMPY_RNG


def seed_rngs(seed: int | None = None, skip_torch: bool = False) -> None:
    """Seed every random number generator.

    Seeds torch (CPU and all CUDA devices) unless ``skip_torch``, python's :py:mod:`random`,
    numpy's legacy global generator (with ``seed % 2**32``) and replaces the default numpy
    generator with a new one seeded with ``seed``.

    Args:
        seed: the seed; ``None`` uses :py:func:`get_default_seed`.
        skip_torch: leave the torch generators untouched.

    Raises:
        TypeError: if ``seed`` is not an int.
    """
    if seed is None:
        seed = _DEFAULT_RNG_SEED
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int or None, got {seed!r}")
    if not skip_torch:
        torch.manual_seed(seed)
        if torch.cuda.is_available():
            torch.cuda.manual_seed_all(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    create_default_numpy_rng(seed)


def _legacy_numpy_state() -> tuple[str, torch.Tensor, int, int, float]:
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    return (
        str(name),
        torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        int(pos),
        int(has_gauss),
        float(cached_gaussian),
    )


def _set_legacy_numpy_state(state: Sequence[Any]) -> None:
    name, keys, pos, has_gauss, cached_gaussian = state
    if isinstance(keys, torch.Tensor):
        keys = keys.numpy()
    keys_array: npt.NDArray[np.uint32] = np.asarray(keys, dtype=np.int64).astype(np.uint32)
    np.random.set_state((name, keys_array, int(pos), int(has_gauss), float(cached_gaussian)))


def get_rng_state_dict() -> dict[str, Any]:
    """Capture the state of every random number generator.

    Returns:
        A dict with keys ``"torch"`` (CPU state tensor), ``"rand"`` (python
        :py:func:`random.getstate`), ``"numpy"`` (default numpy generator state),
        ``"numpy_legacy"`` (legacy global numpy state as ``(name, keys, pos, has_gauss,
        cached_gaussian)`` with ``keys`` an int64 tensor) and, when CUDA is available,
        ``"cuda"`` (list of state tensors, one per device). Every value is a tensor or a
        plain python container, so the dict loads with ``torch.load(weights_only=True)``.

    Raises:
        RuntimeError: if the default numpy generator has not been created.
    """
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "rand": random.getstate(),
        "numpy": get_default_numpy_rng().state_dict(),
        "numpy_legacy": _legacy_numpy_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def load_rng_state_dict(state: dict[str, Any]) -> None:
    """Restore the generators from a dict made by :py:func:`get_rng_state_dict`.

    ``"numpy_legacy"`` and ``"cuda"`` are optional; CUDA states are restored only when CUDA
    is available, for as many devices as both the state and the machine have. The default
    numpy generator is created first if it does not exist.

    Args:
        state: the saved state.

    Raises:
        ValueError: if one of the keys ``"torch"``, ``"rand"`` or ``"numpy"`` is missing.
    """
    missing = [key for key in _REQUIRED_STATE_KEYS if key not in state]
    if missing:
        raise ValueError(
            f"RNG state is missing the keys {missing}; expected a dict from "
            f"get_rng_state_dict with keys {list(_REQUIRED_STATE_KEYS)}"
        )
    torch.set_rng_state(state["torch"])

    version, internal, gauss_next = state["rand"]
    random.setstate((version, tuple(internal), gauss_next))

    if _DEFAULT_NUMPY_RNG is None:
        create_default_numpy_rng()
    get_default_numpy_rng().load_state_dict(state["numpy"])

    if "numpy_legacy" in state:
        _set_legacy_numpy_state(state["numpy_legacy"])

    if "cuda" in state and torch.cuda.is_available():
        cuda_state = state["cuda"]
        if isinstance(cuda_state, torch.Tensor):
            torch.cuda.set_rng_state(cuda_state)
        else:
            for device, device_state in enumerate(list(cuda_state)[: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(device_state, device)
