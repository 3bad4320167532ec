"""Base class for losses scaled by a constant weight."""

from __future__ import annotations

import abc
import numbers
from typing import Any

import torch
from torch import nn


class WeightedLoss(nn.Module, metaclass=abc.ABCMeta):
    """A loss whose value is multiplied by a constant weight.

    Subclasses implement :py:meth:`_eval`; calling the module returns
    ``loss_weight * _eval(*args, **kwargs)``.

    Args:
        loss_weight: the factor applied to the loss value.

    Raises:
        TypeError: if ``loss_weight`` is not a real number.
    """

    def __init__(self, loss_weight: float = 1.0) -> None:
        super().__init__()
        value: object = loss_weight  # checked as an object: callers may pass anything
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(
                f"loss_weight must be a real number, got {loss_weight!r} "
                f"({type(loss_weight).__name__})"
            )
        self._loss_weight: float = float(loss_weight)

    @property
    def loss_weight(self) -> float:
        """The factor applied to the loss value."""
        return self._loss_weight

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Evaluate the loss and scale it by the weight.

        Args:
            *args: positional arguments for :py:meth:`_eval`.
            **kwargs: keyword arguments for :py:meth:`_eval`.

        Returns:
            The weighted loss.
        """
        return self._loss_weight * self._eval(*args, **kwargs)

    @abc.abstractmethod
    def _eval(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Compute the unweighted loss.

        Args:
            *args: positional arguments given to the module call.
            **kwargs: keyword arguments given to the module call.

        Returns:
            The unweighted loss.
        """
