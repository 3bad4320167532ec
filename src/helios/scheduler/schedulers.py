"""Learning rate schedulers with restarts."""

from __future__ import annotations

import bisect
import itertools
import math
from collections import Counter
from collections.abc import Sequence

import torch
from torch import optim
from torch.optim import lr_scheduler

from .utils import SCHEDULER_REGISTRY


def _check_lengths(
    name_a: str, values_a: Sequence[object], name_b: str, values_b: Sequence[object]
) -> None:
    if len(values_a) != len(values_b):
        raise ValueError(
            f"{name_a} and {name_b} must have the same length, got "
            f"{name_a}={list(values_a)} (length {len(values_a)}) and "
            f"{name_b}={list(values_b)} (length {len(values_b)})"
        )


@SCHEDULER_REGISTRY.register
class CosineAnnealingRestartLR(lr_scheduler.LRScheduler):
    """Cosine annealing with restarts.

    The schedule is split into consecutive periods. In period ``i`` (which starts after the
    sum of the previous periods, ``restart``) the learning rate is::

        eta_min + w_i * 0.5 * (base_lr - eta_min) * (1 + cos(pi * (epoch - restart) / p_i))

    Epoch ``e`` belongs to the first period whose cumulative end is ``>= e``. After the last
    period the learning rate stays at ``eta_min`` (the reference wrapped back to the first
    period's curve instead).

    Example: ``periods=[10, 10, 10, 10]``, ``restart_weights=[1, 0.5, 0.5, 0.5]`` runs four
    cycles of 10 epochs, the last three restarting at half the base learning rate.

    Args:
        optimizer: the wrapped optimizer.
        periods: the length of each cycle.
        restart_weights: the weight of each cycle. Defaults to ``[1]``.
        eta_min: the minimum learning rate.
        last_epoch: the index of the last epoch.

    Raises:
        ValueError: if ``periods`` is empty or holds a non-positive value, or if
            ``periods`` and ``restart_weights`` differ in length.
    """

    def __init__(
        self,
        optimizer: optim.Optimizer,
        periods: list[int],
        restart_weights: list[float] | None = None,
        eta_min: float = 0,
        last_epoch: int = -1,
    ) -> None:
        weights = [1.0] if restart_weights is None else list(restart_weights)
        periods = list(periods)
        if not periods or any(
            isinstance(p, bool) or not isinstance(p, int) or p <= 0 for p in periods
        ):
            raise ValueError(
                f"periods must be a non-empty list of positive integers, got periods={periods}"
            )
        _check_lengths("periods", periods, "restart_weights", weights)

        self.periods = periods
        self.restart_weights = weights
        self.eta_min = eta_min
        self.cumulative_period = list(itertools.accumulate(periods))
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float | torch.Tensor]:
        """Compute the learning rate of every parameter group at ``last_epoch``.

        Returns:
            The learning rates.
        """
        idx = bisect.bisect_left(self.cumulative_period, self.last_epoch)
        if idx == len(self.periods):
            return [self.eta_min for _ in self.base_lrs]

        weight = self.restart_weights[idx]
        restart = 0 if idx == 0 else self.cumulative_period[idx - 1]
        period = self.periods[idx]
        factor = 0.5 * (1 + math.cos(math.pi * (self.last_epoch - restart) / period))
        return [
            self.eta_min + weight * factor * (base_lr - self.eta_min) for base_lr in self.base_lrs
        ]


@SCHEDULER_REGISTRY.register
class MultiStepRestartLR(lr_scheduler.LRScheduler):
    """Multi-step decay with restarts.

    At each milestone the learning rate is multiplied by ``gamma`` (once per occurrence of
    the milestone in the list). At each restart epoch it is reset to the initial learning
    rate times the restart's weight.

    Args:
        optimizer: the wrapped optimizer.
        milestones: the epochs at which the learning rate decays.
        gamma: the decay factor.
        restarts: the epochs at which the learning rate restarts. Defaults to ``[0]``.
        restart_weights: the weight of each restart. Defaults to ``[1]``.
        last_epoch: the index of the last epoch.

    Raises:
        ValueError: if ``restarts`` and ``restart_weights`` differ in length.
    """

    def __init__(
        self,
        optimizer: optim.Optimizer,
        milestones: list[int],
        gamma: float = 0.1,
        restarts: list[int] | None = None,
        restart_weights: list[float] | None = None,
        last_epoch: int = -1,
    ) -> None:
        restarts = [0] if restarts is None else list(restarts)
        weights = [1.0] if restart_weights is None else list(restart_weights)
        _check_lengths("restarts", restarts, "restart_weights", weights)

        self.milestones = Counter(milestones)
        self.gamma = gamma
        self.restarts = restarts
        self.restart_weights = weights
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float | torch.Tensor]:
        """Compute the learning rate of every parameter group at ``last_epoch``.

        Returns:
            The learning rates.
        """
        groups = self.optimizer.param_groups
        if self.last_epoch in self.restarts:
            weight = self.restart_weights[self.restarts.index(self.last_epoch)]
            return [group["initial_lr"] * weight for group in groups]
        if self.last_epoch not in self.milestones:
            return [group["lr"] for group in groups]
        factor = self.gamma ** self.milestones[self.last_epoch]
        return [group["lr"] * factor for group in groups]


@SCHEDULER_REGISTRY.register
class WarmupCosineLR(lr_scheduler.LRScheduler):
    """Linear warmup, then cosine decay to ``eta_min``: the schedule of most transformer scripts.

    With ``t`` the number of ``step()`` calls so far (``last_epoch``) and ``lr`` each
    group's initial learning rate::

        t < warmup_steps:            lr * (t + 1) / (warmup_steps + 1)
        warmup_steps <= t <= total:  eta_min + (lr - eta_min) * 0.5 * (1 + cos(pi * p))
                                     with p = (t - warmup_steps) / (total_steps - warmup_steps)
        t > total_steps:             eta_min

    (the warmup never starts at 0, so the first step already learns). The rate is a
    function of ``t`` alone, so a scheduler restored from its ``state_dict`` continues
    exactly. Step it once per optimizer step (``total_steps`` counts those), e.g. right
    after :py:meth:`helios.model.Model.optimizer_step`.

    Example:
        .. code-block:: python

            self._optimizer = torch.optim.AdamW(self._net.parameters(), lr=6e-4)
            self._scheduler = hls.WarmupCosineLR(
                self._optimizer, warmup_steps=100, total_steps=5000, eta_min=6e-5
            )

    Args:
        optimizer: the wrapped optimizer.
        warmup_steps: the steps of the linear warmup (0: none).
        total_steps: the step at which the decay reaches ``eta_min``.
        eta_min: the learning rate at the end of the decay and after it.
        last_epoch: the index of the last step (``-1``: a new schedule).

    Raises:
        ValueError: if ``warmup_steps`` is negative, ``total_steps`` is not greater than
            ``warmup_steps``, or ``eta_min`` is negative.
    """

    def __init__(
        self,
        optimizer: optim.Optimizer,
        warmup_steps: int,
        total_steps: int,
        eta_min: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        for name, value in (("warmup_steps", warmup_steps), ("total_steps", total_steps)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an int, got {name}={value!r}")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got warmup_steps={warmup_steps}")
        if total_steps <= warmup_steps:
            raise ValueError(
                f"total_steps must be greater than warmup_steps, got total_steps={total_steps} "
                f"and warmup_steps={warmup_steps}"
            )
        if eta_min < 0:
            raise ValueError(f"eta_min must be >= 0, got eta_min={eta_min}")
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.eta_min = eta_min
        super().__init__(optimizer, last_epoch)

    def _rate(self, base_lr: float | torch.Tensor) -> float:
        base_lr = float(base_lr)
        step = self.last_epoch
        if step < self.warmup_steps:
            return base_lr * (step + 1) / (self.warmup_steps + 1)
        if step > self.total_steps:
            return self.eta_min
        progress = (step - self.warmup_steps) / (self.total_steps - self.warmup_steps)
        return self.eta_min + (base_lr - self.eta_min) * 0.5 * (1 + math.cos(math.pi * progress))

    def get_lr(self) -> list[float | torch.Tensor]:
        """Compute the learning rate of every parameter group at ``last_epoch``.

        Returns:
            The learning rates.
        """
        return [self._rate(base_lr) for base_lr in self.base_lrs]

    def _get_closed_form_lr(self) -> list[float]:
        return [self._rate(base_lr) for base_lr in self.base_lrs]
