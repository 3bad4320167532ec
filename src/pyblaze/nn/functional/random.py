"""Random noise for generative models (PyBlaze 1.1.6 ``pyblaze.nn.functional.random``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

NOISE_TYPES = ("normal", "uniform")


def generate_noise(shape: torch.Size | Sequence[int], noise_type: str = "normal") -> torch.Tensor:
    """Draw noise, e.g. the input of a GAN's generator, from the global torch generator.

    Args:
        shape: the shape of the noise.
        noise_type: ``"normal"`` (standard normal) or ``"uniform"`` (uniform on ``[-1, 1)``).

    Returns:
        A float tensor of the given shape.

    Raises:
        ValueError: if ``noise_type`` is not one of the two names.
    """
    if noise_type == "normal":
        return torch.randn(tuple(shape))
    if noise_type == "uniform":
        return torch.rand(tuple(shape)) * 2 - 1
    raise ValueError(f"invalid noise_type {noise_type!r}; expected one of {list(NOISE_TYPES)}")


__all__ = ["NOISE_TYPES", "generate_noise"]
