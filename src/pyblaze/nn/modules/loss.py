"""Losses of PyBlaze 1.1.6."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn


def balanced_class_weights(labels: npt.ArrayLike) -> torch.Tensor:
    """Weights that make every class count equally: ``n_samples / (n_classes * count_c)``.

    The classes are ``0 .. max(labels)`` (scikit-learn's ``compute_class_weight("balanced")``
    for those classes). A class without samples cannot be balanced.

    Args:
        labels: the integer class of every sample.

    Returns:
        One float weight per class.

    Raises:
        ValueError: if ``labels`` is empty, holds negative or non-integer values, or a class
            between 0 and the maximum has no sample.
    """
    values = np.asarray(labels)
    if values.size == 0:
        raise ValueError("labels must not be empty")
    if not np.all(np.equal(np.mod(values, 1), 0)) or values.min() < 0:
        raise ValueError("labels must be non-negative integers")
    values = values.astype(np.int64).ravel()
    counts = np.bincount(values)
    if np.any(counts == 0):
        missing = np.flatnonzero(counts == 0).tolist()
        raise ValueError(f"classes {missing} have no sample in labels")
    weights = values.size / (counts.size * counts)
    return torch.as_tensor(weights, dtype=torch.float)


class WeightedBCELoss(nn.Module):
    """Binary cross entropy with balanced class weights and an ignored label value.

    Without arguments it equals :py:class:`torch.nn.BCELoss` (mean reduction). With
    ``labels``, every element's loss is multiplied by the weight of its target class
    (:py:func:`balanced_class_weights`) and the mean is taken. With ``ignore_index``,
    elements whose target equals it are left out before anything else.

    Args:
        labels: the training labels the class weights are computed from.
        ignore_index: a target value whose elements do not count.
    """

    def __init__(self, labels: npt.ArrayLike | None = None, ignore_index: Any = None) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        weights = None if labels is None else balanced_class_weights(labels)
        self.weights: torch.Tensor | None
        self.register_buffer("weights", weights)

    def forward(self, y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
        """Compute the loss.

        Args:
            y_pred: probabilities in ``[0, 1]``.
            y_true: targets (0/1), same shape.

        Returns:
            The mean (weighted) binary cross entropy.
        """
        if self.ignore_index is not None:
            keep = y_true != self.ignore_index
            y_pred, y_true = y_pred[keep], y_true[keep]
        target = y_true.to(y_pred.dtype)
        if self.weights is None:
            return nn.functional.binary_cross_entropy(y_pred, target)
        losses = nn.functional.binary_cross_entropy(y_pred, target, reduction="none")
        return (losses * self.weights[y_true.long()]).mean()


__all__ = ["WeightedBCELoss", "balanced_class_weights"]
