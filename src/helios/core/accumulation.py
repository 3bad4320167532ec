"""Gradient accumulation: how many batches make one optimizer step, and where a batch is.

The training loop owns one :py:class:`Accumulation` per run and says, before each
``train_step``, whether the batch closes an iteration (the batch after which the optimizers
step). The :py:class:`~helios.model.Model` helpers read it, so one ``train_step`` is written
the same at any ``accumulation_steps``:

* :py:meth:`~helios.model.Model.backward` divides the loss by ``steps`` before the backward
  pass (the gradients of an iteration add up to those of the mean loss of its batches);
* :py:meth:`~helios.model.Model.clip_gradients` and
  :py:meth:`~helios.model.Model.optimizer_step` act only on the batch that closes the
  iteration (the step then zeroes the gradients for the next one).

In the EPOCH unit every batch is an iteration (as in Helios 1.2.7, which ignores
``accumulation_steps`` there), so ``steps`` is 1.
"""

from __future__ import annotations


class Accumulation:
    """Batches per optimizer step, and whether the current batch is the last of its step.

    Args:
        steps: the number of batches whose gradients add up to one optimizer step.
    """

    __slots__ = ("closes_step", "steps")

    def __init__(self, steps: int = 1) -> None:
        self.steps = steps
        self.closes_step = True
        """Whether the current batch is the last one of its iteration (set by the loop)."""

    def __repr__(self) -> str:
        return f"Accumulation(steps={self.steps}, closes_step={self.closes_step})"


NO_ACCUMULATION = Accumulation()
"""Every batch steps, as the helpers do outside a run and at ``steps == 1``."""

__all__ = ["NO_ACCUMULATION", "Accumulation"]
