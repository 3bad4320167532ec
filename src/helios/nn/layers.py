"""Layers that export cleanly to ONNX."""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn


class OutputSizeTypeError(RuntimeError, TypeError):
    """``output_size`` has the wrong type.

    It derives from :py:class:`RuntimeError`, the type Helios 1.2.7 documents for every
    invalid ``output_size``, and from :py:class:`TypeError`, the precise kind.
    """


class OutputSizeValueError(RuntimeError, ValueError):
    """``output_size`` has the right type but an invalid value (length or sign).

    It derives from :py:class:`RuntimeError`, the type Helios 1.2.7 documents for every
    invalid ``output_size``, and from :py:class:`ValueError`, the precise kind.
    """


def _check_size_entry(value: object, output_size: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise OutputSizeTypeError(
            f"the entries of output_size must be int or None, got output_size={output_size!r}"
        )
    if value <= 0:
        raise OutputSizeValueError(
            f"the entries of output_size must be positive, got output_size={output_size!r}"
        )


class AdaptiveAvgPool2d(nn.Module):
    """An ONNX-exportable replacement for :py:class:`torch.nn.AdaptiveAvgPool2d`.

    The pooling is done by :py:func:`torch.nn.functional.avg_pool2d` with a kernel and
    stride derived from the input size: ``stride = in // out`` and
    ``kernel = in - (out - 1) * stride``. The output shape always equals that of
    :py:class:`torch.nn.AdaptiveAvgPool2d`; the values are equal when every input dimension
    is a multiple of the matching output dimension (otherwise the windows are placed
    differently).

    Args:
        output_size: the target ``(H, W)``. An int ``n`` means ``(n, n)``; a ``None`` entry
            keeps that input dimension.

    Raises:
        OutputSizeTypeError: (a :py:class:`RuntimeError` and :py:class:`TypeError`) if
            ``output_size`` is not an int or a tuple of int/None.
        OutputSizeValueError: (a :py:class:`RuntimeError` and :py:class:`ValueError`) if
            ``output_size`` is a tuple whose length is not 2 or if a size is not positive.
    """

    def __init__(self, output_size: int | tuple[int | None, int | None]) -> None:
        super().__init__()
        if isinstance(output_size, int) and not isinstance(output_size, bool):
            _check_size_entry(output_size, output_size)
            size: tuple[int | None, int | None] = (output_size, output_size)
        elif isinstance(output_size, tuple):
            if len(output_size) != 2:
                raise OutputSizeValueError(
                    "output_size must be a tuple of length 2, got "
                    f"output_size={output_size!r} (length {len(output_size)})"
                )
            for value in output_size:
                _check_size_entry(value, output_size)
            size = output_size
        else:
            raise OutputSizeTypeError(
                "output_size must be an int or a tuple of two int/None, got "
                f"output_size={output_size!r} ({type(output_size).__name__})"
            )
        self.output_size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pool the input.

        Args:
            x: a ``(N, C, H, W)`` or ``(C, H, W)`` tensor.

        Returns:
            The pooled tensor.

        Raises:
            ValueError: if an output size is larger than the input size.
        """
        in_size = (int(x.shape[-2]), int(x.shape[-1]))
        out_size = tuple(
            i if o is None else o for i, o in zip(in_size, self.output_size, strict=True)
        )
        if out_size[0] > in_size[0] or out_size[1] > in_size[1]:
            raise ValueError(
                f"output_size {self.output_size} is larger than the input size {in_size}"
            )
        stride = tuple(i // o for i, o in zip(in_size, out_size, strict=True))
        kernel = tuple(i - (o - 1) * s for i, o, s in zip(in_size, out_size, stride, strict=True))
        return F.avg_pool2d(x, kernel_size=kernel, stride=stride)

    def extra_repr(self) -> str:
        """Return the output size for the module's ``repr``."""
        return f"output_size={self.output_size}"
