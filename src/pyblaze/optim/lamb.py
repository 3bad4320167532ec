"""The LAMB optimizer (You et al., 2019, "Large Batch Optimization for Deep Learning")."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import optim

_MAX_TRUST_RATIO = 10.0


class LAMB(optim.Optimizer):
    """Layer-wise Adaptive Moments for Batch training: Adam with a per-tensor trust ratio.

    For each parameter tensor ``p`` with gradient ``g``, step ``t``:

    * ``m = beta1 * m + (1 - beta1) * g`` and ``v = beta2 * v + (1 - beta2) * g * g``;
    * ``u = m / (1 - beta1**t) / (sqrt(v / (1 - beta2**t)) + eps)`` (the Adam step, with
      bias correction), plus ``weight_decay * p``;
    * ``r = ||p|| / ||u||``, capped at 10, and 1 if either norm is 0;
    * ``p -= lr_t * r * u``, where ``lr_t = lr / (1 + lr_decay * t)``.

    PyBlaze 1.1.6's ``lr_decay`` multiplied the rate by ``1 + lr_decay * t`` (an operator
    precedence slip), so it grew; here it decays, as the name and documentation say. Its
    ``eps`` was added to ``sqrt(v)`` before bias correction; here after, as in Adam.

    Args:
        params: the parameters, or parameter groups (dicts) overriding the defaults.
        lr: the learning rate.
        betas: the decay rates of the running averages of the gradient and its square.
        eps: added to the denominator for numerical stability.
        weight_decay: L2 penalty added to the update (decoupled, as in the LAMB paper).
        lr_decay: the learning rate at step ``t`` is ``lr / (1 + lr_decay * t)``.

    Raises:
        ValueError: for a learning rate, beta, epsilon or decay out of range.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        lr_decay: float = 0,
    ) -> None:
        if not lr > 0:
            raise ValueError(f"lr must be greater than 0, got {lr!r}")
        if len(betas) != 2 or not all(0 < b < 1 for b in betas):
            raise ValueError(f"betas must be two values in (0, 1), got {betas!r}")
        if not eps > 0:
            raise ValueError(f"eps must be greater than 0, got {eps!r}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
        if lr_decay < 0:
            raise ValueError(f"lr_decay must be >= 0, got {lr_decay!r}")
        defaults = {
            "lr": lr,
            "betas": tuple(betas),
            "eps": eps,
            "weight_decay": weight_decay,
            "lr_decay": lr_decay,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Update the parameters once.

        Args:
            closure: re-evaluates the model and returns the loss (called with gradients
                enabled).

        Returns:
            The loss returned by ``closure``, if given.

        Raises:
            RuntimeError: for sparse gradients.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if grad.is_sparse:
                    raise RuntimeError("LAMB does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                t = state["step"]
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)

                corrected_avg = exp_avg / (1 - beta1**t)
                corrected_sq = exp_avg_sq / (1 - beta2**t)
                update = corrected_avg / (corrected_sq.sqrt() + group["eps"])
                if group["weight_decay"]:
                    update = update.add(p, alpha=group["weight_decay"])

                weight_norm = float(p.norm())
                update_norm = float(update.norm())
                trust = 1.0
                if weight_norm > 0 and update_norm > 0:
                    trust = min(weight_norm / update_norm, _MAX_TRUST_RATIO)
                lr = group["lr"] / (1 + group["lr_decay"] * t)
                p.add_(update, alpha=-lr * trust)
        return loss


__all__ = ["LAMB"]
