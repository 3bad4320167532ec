"""A numerically stable Gumbel softmax (PyBlaze 1.1.6 ``pyblaze.nn.functional.gumbel``)."""

from __future__ import annotations

import torch


def gumbel_softmax(
    logits: torch.Tensor, tau: float = 1, hard: bool = False, eps: float = 1e-10, dim: int = -1
) -> torch.Tensor:
    """Draw a (relaxed) one-hot sample from the categorical distribution of ``logits``.

    Gumbel noise ``-log(eps - log(u + eps))`` with ``u ~ U(0, 1)`` is added to the logits
    and a softmax with temperature ``tau`` is taken; ``eps`` keeps both logarithms finite
    (where :py:func:`torch.nn.functional.gumbel_softmax` can produce ``inf``). With
    ``hard``, the result is the one-hot vector of the largest entry in the forward pass and
    the soft sample's gradient in the backward pass (straight-through estimator). The noise
    comes from the global torch generator.

    Args:
        logits: unnormalised log-probabilities.
        tau: the temperature (> 0); small values give nearly one-hot samples.
        hard: return one-hot samples (with straight-through gradients).
        eps: constant for numerical stability.
        dim: the dimension of the categories.

    Returns:
        A sample of the same shape as ``logits``; it sums to 1 along ``dim``.

    Raises:
        ValueError: if ``tau`` is not positive.
    """
    if not tau > 0:
        raise ValueError(f"tau must be greater than 0, got {tau!r}")
    uniform = torch.rand_like(logits)
    gumbel = -torch.log(eps - torch.log(uniform + eps))
    soft = torch.softmax((logits + gumbel) / tau, dim=dim)
    if not hard:
        return soft
    index = soft.argmax(dim=dim, keepdim=True)
    one_hot = torch.zeros_like(soft).scatter_(dim, index, 1.0)
    return one_hot - soft.detach() + soft


__all__ = ["gumbel_softmax"]
