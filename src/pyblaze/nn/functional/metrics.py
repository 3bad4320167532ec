"""Metrics called as ``metric(y_pred, y_true)`` on the predictions of a whole data set.

:py:meth:`~pyblaze.nn.BaseEngine.evaluate` concatenates the outputs of every batch before
it calls a metric, so each metric sees the complete data set once: the values are exact
whole-set scores, never averages of per-batch scores.

Class predictions are derived from ``y_pred`` as follows:

* a 2-D tensor ``[N, C]`` of scores (logits or probabilities) gives the arg-max class;
* a 1-D floating point tensor of probabilities is thresholded at 0.5;
* a 1-D integer (or boolean) tensor is used as is.

Every function returns a 0-dim ``float64`` tensor.
"""

from __future__ import annotations

import torch


def _check_pair(y_pred: torch.Tensor, y_true: torch.Tensor) -> None:
    for name, value in (("y_pred", y_pred), ("y_true", y_true)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, but received {type(value).__name__}")
    if y_true.dim() != 1:
        raise ValueError(
            f"y_true must be a 1-D tensor of labels, but has shape {tuple(y_true.shape)}"
        )
    if y_pred.dim() == 0 or y_pred.size(0) != y_true.size(0):
        raise ValueError(
            f"y_pred and y_true must hold the same number of samples, but y_pred has shape "
            f"{tuple(y_pred.shape)} and y_true has shape {tuple(y_true.shape)}"
        )
    if y_true.numel() == 0:
        raise ValueError("y_true is empty: a metric needs at least one sample")


def _to_classes(y_pred: torch.Tensor) -> torch.Tensor:
    if y_pred.dim() == 2:
        return y_pred.argmax(dim=-1)
    if y_pred.dim() == 1:
        if y_pred.is_floating_point():
            return (y_pred >= 0.5).long()
        return y_pred
    raise ValueError(
        "y_pred must be a 1-D tensor (labels or probabilities) or a 2-D tensor of class "
        f"scores [N, C], but has shape {tuple(y_pred.shape)}"
    )


def accuracy(y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
    """Compute the fraction of correctly classified samples.

    Args:
        y_pred: class scores ``[N, C]``, probabilities ``[N]`` or labels ``[N]``.
        y_true: the true labels ``[N]``.

    Returns:
        The accuracy in ``[0, 1]``.

    Raises:
        TypeError: if an argument is not a tensor.
        ValueError: if the shapes do not match or the tensors are empty.
    """
    _check_pair(y_pred, y_true)
    classes = _to_classes(y_pred)
    return (classes == y_true.to(classes.device)).double().mean()


def _binary_counts(
    y_pred: torch.Tensor, y_true: torch.Tensor, c: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _check_pair(y_pred, y_true)
    predicted = _to_classes(y_pred) == c
    actual = y_true.to(predicted.device) == c
    true_pos = (predicted & actual).sum().double()
    return true_pos, predicted.sum().double(), actual.sum().double()


def precision(y_pred: torch.Tensor, y_true: torch.Tensor, c: int = 1) -> torch.Tensor:
    """Compute the precision for class ``c``: ``TP / (TP + FP)``.

    Args:
        y_pred: class scores ``[N, C]``, probabilities ``[N]`` or labels ``[N]``.
        y_true: the true labels ``[N]``.
        c: the class regarded as positive.

    Returns:
        The precision; NaN if ``c`` is never predicted.

    Raises:
        TypeError: if an argument is not a tensor.
        ValueError: if the shapes do not match or the tensors are empty.
    """
    true_pos, predicted, _ = _binary_counts(y_pred, y_true, c)
    return true_pos / predicted


def recall(y_pred: torch.Tensor, y_true: torch.Tensor, c: int = 1) -> torch.Tensor:
    """Compute the recall for class ``c``: ``TP / (TP + FN)``.

    Args:
        y_pred: class scores ``[N, C]``, probabilities ``[N]`` or labels ``[N]``.
        y_true: the true labels ``[N]``.
        c: the class regarded as positive.

    Returns:
        The recall; NaN if ``c`` never occurs in ``y_true``.

    Raises:
        TypeError: if an argument is not a tensor.
        ValueError: if the shapes do not match or the tensors are empty.
    """
    true_pos, _, actual = _binary_counts(y_pred, y_true, c)
    return true_pos / actual


def f1_score(y_pred: torch.Tensor, y_true: torch.Tensor, c: int = 1) -> torch.Tensor:
    """Compute the F1 score for class ``c``: the harmonic mean of precision and recall.

    Args:
        y_pred: class scores ``[N, C]``, probabilities ``[N]`` or labels ``[N]``.
        y_true: the true labels ``[N]``.
        c: the class regarded as positive.

    Returns:
        ``2 * P * R / (P + R)``; NaN if precision or recall is undefined or both are 0.

    Raises:
        TypeError: if an argument is not a tensor.
        ValueError: if the shapes do not match or the tensors are empty.
    """
    true_pos, predicted, actual = _binary_counts(y_pred, y_true, c)
    prec = true_pos / predicted
    rec = true_pos / actual
    return 2 * prec * rec / (prec + rec)


def _binary_scores(
    y_pred: torch.Tensor, y_true: torch.Tensor, name: str
) -> tuple[torch.Tensor, torch.Tensor]:
    _check_pair(y_pred, y_true)
    if y_pred.dim() != 1:
        raise ValueError(
            f"{name} expects y_pred to be a 1-D tensor of scores for the positive class, "
            f"but it has shape {tuple(y_pred.shape)}; for two-class scores [N, 2] pass "
            "y_pred[:, 1]"
        )
    labels = y_true.to(y_pred.device)
    if not bool(((labels == 0) | (labels == 1)).all()):
        raise ValueError(
            f"{name} expects y_true to hold binary labels (0 or 1), but found the values "
            f"{sorted(labels.unique().tolist())}"
        )
    return y_pred.double(), labels.double()


def roc_auc_score(y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
    """Compute the area under the ROC curve of binary scores.

    Equal to the probability that a random positive sample scores higher than a random
    negative one (ties count one half). Computed with average ranks, in ``O(N log N)``.

    Args:
        y_pred: scores of the positive class ``[N]`` (any monotone scale).
        y_true: binary labels ``[N]``.

    Returns:
        The ROC AUC in ``[0, 1]``.

    Raises:
        TypeError: if an argument is not a tensor.
        ValueError: if ``y_pred`` is not 1-D, ``y_true`` is not binary or holds only one
            class, or the shapes do not match.
    """
    scores, labels = _binary_scores(y_pred, y_true, "roc_auc_score")
    num_pos = labels.sum()
    num_neg = labels.numel() - num_pos
    if num_pos == 0 or num_neg == 0:
        raise ValueError(
            "roc_auc_score is undefined when y_true holds only one class; it needs both "
            "positive (1) and negative (0) samples"
        )
    ranks = _average_ranks(scores)
    rank_sum = (ranks * labels).sum()
    auc = (rank_sum - num_pos * (num_pos + 1) / 2) / (num_pos * num_neg)
    return auc


def _average_ranks(values: torch.Tensor) -> torch.Tensor:
    """Return the 1-based ranks of ``values``, tied values sharing their average rank."""
    sorted_values, order = torch.sort(values)
    _, inverse, counts = torch.unique_consecutive(
        sorted_values, return_inverse=True, return_counts=True
    )
    ends = torch.cumsum(counts, dim=0).double()
    starts = ends - counts.double() + 1
    group_rank = (starts + ends) / 2
    ranks = torch.empty_like(values)
    ranks[order] = group_rank[inverse]
    return ranks


def average_precision(y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
    """Compute the average precision of binary scores.

    ``AP = sum_n (R_n - R_{n-1}) * P_n`` over the distinct score thresholds in decreasing
    order, where ``P_n`` and ``R_n`` are the precision and recall at the n-th threshold
    (the same definition as scikit-learn's ``average_precision_score``; no interpolation).

    Args:
        y_pred: scores of the positive class ``[N]``.
        y_true: binary labels ``[N]``.

    Returns:
        The average precision in ``[0, 1]``.

    Raises:
        TypeError: if an argument is not a tensor.
        ValueError: if ``y_pred`` is not 1-D, ``y_true`` is not binary or holds no positive
            sample, or the shapes do not match.
    """
    scores, labels = _binary_scores(y_pred, y_true, "average_precision")
    if labels.sum() == 0:
        raise ValueError("average_precision is undefined when y_true holds no positive (1) sample")
    order = torch.argsort(scores, descending=True, stable=True)
    sorted_scores = scores[order]
    sorted_labels = labels[order]
    # The last index of each run of equal scores is where a threshold cuts.
    is_last = torch.ones_like(sorted_scores, dtype=torch.bool)
    is_last[:-1] = sorted_scores[1:] != sorted_scores[:-1]
    true_pos = torch.cumsum(sorted_labels, dim=0)[is_last]
    predicted = (torch.nonzero(is_last).squeeze(1) + 1).double()
    prec = true_pos / predicted
    rec = true_pos / true_pos[-1]
    previous = torch.cat([rec.new_zeros(1), rec[:-1]])
    return ((rec - previous) * prec).sum()


__all__ = [
    "accuracy",
    "average_precision",
    "f1_score",
    "precision",
    "recall",
    "roc_auc_score",
]
