"""Small CUDA helpers."""

from __future__ import annotations

import torch


def requires_cuda_support() -> None:
    """Check that CUDA is available.

    Raises:
        RuntimeError: if :py:func:`torch.cuda.is_available` is false.
    """
    if not torch.cuda.is_available():
        raise RuntimeError("expected CUDA support but none was found")


class DisableCuDNNBenchmarkContext:
    """Turn ``torch.backends.cudnn.benchmark`` off inside a ``with`` block.

    The previous value is restored on exit. Without CUDA the context does nothing.
    """

    def __init__(self) -> None:
        self._enabled = torch.cuda.is_available()
        self._previous = bool(torch.backends.cudnn.benchmark)

    def __enter__(self) -> DisableCuDNNBenchmarkContext:
        if self._enabled:
            torch.backends.cudnn.benchmark = False
        return self

    def __exit__(self, *args: object) -> None:
        if self._enabled:
            torch.backends.cudnn.benchmark = self._previous
