"""How a run ended, kept in its checkpoints so that a finished run stays finished.

A run that early stopping or ``should_training_stop`` ended writes one checkpoint at the
stop, which records the reason (:py:class:`RunEnd` is a checkpoint part). Running the same
``fit`` again loads it and trains nothing, whatever ``total_steps`` says: the run is over.
A run that ended because it reached ``total_steps`` is finished by its position alone, so a
larger ``total_steps`` continues it.

A finished run that is run again calls neither ``on_training_start`` nor
``on_training_end`` (of the model or of any plug-in): nothing starts and nothing trains, so
hooks that read what the training produced (the last loss, the last validation scores)
never see empty tables. ``fit`` logs why it trained nothing and returns True.
"""

from __future__ import annotations

import math
from typing import Any

from .state import TrainingState, TrainingUnit

EARLY_STOPPING = "early_stopping"
"""The reason of a run that ``early_stop_cycles`` validations without improvement ended."""

STOP_REQUESTED = "should_training_stop"
"""The reason of a run that a model's or plug-in's ``should_training_stop`` ended."""

TOTAL_STEPS = "total_steps"
"""The reason of a run that reached ``total_steps`` (never recorded: the position says it)."""


class RunEnd:
    """The end of a run by a stop, a checkpoint part (``None`` while the run goes on)."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self.epoch = 0
        self.iteration = 0

    def record(self, reason: str, state: TrainingState) -> None:
        """Record that the run ended here, for the checkpoint written next.

        Args:
            reason: :py:data:`EARLY_STOPPING` or :py:data:`STOP_REQUESTED`.
            state: the training state at the stop.
        """
        self.reason = reason
        self.epoch = state.global_epoch
        self.iteration = state.current_iteration

    def state_dict(self) -> dict[str, Any] | None:
        """Return the recorded end, or ``None`` while the run has not stopped."""
        if self.reason is None:
            return None
        return {"reason": self.reason, "epoch": self.epoch, "iteration": self.iteration}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Take over the end recorded in a checkpoint."""
        self.reason = str(state_dict["reason"])
        self.epoch = int(state_dict.get("epoch", 0))
        self.iteration = int(state_dict.get("iteration", 0))


def finished_message(
    run_end: RunEnd,
    state: TrainingState,
    train_unit: TrainingUnit,
    total_steps: int | float,
    unit_end_pending: bool,
) -> str | None:
    """Say why a resumed run has nothing left to train, or return ``None`` if it has.

    Args:
        run_end: the end recorded in the checkpoint.
        state: the resumed training state.
        train_unit: the unit of ``total_steps``.
        total_steps: the ``total_steps`` of this ``fit``.
        unit_end_pending: whether a signal interrupted the last unit before it ended.

    Returns:
        The message to log and print, or ``None`` when training continues.
    """
    unit = train_unit.name.lower()
    where = f"epoch {state.global_epoch}, iteration {state.current_iteration}"
    if run_end.reason is not None:
        why = "early stopping" if run_end.reason == EARLY_STOPPING else "should_training_stop"
        return (
            f"The run already ended by {why} at {where}; nothing to train. To train it "
            "further, start a new run: move or delete its checkpoint folder, or give the "
            "model a new save_name."
        )
    if total_steps == math.inf or unit_end_pending:
        return None
    index = state.global_epoch if train_unit == TrainingUnit.EPOCH else state.current_iteration
    inside_epoch = train_unit == TrainingUnit.EPOCH and state.dataset_iter > 0
    if index >= total_steps and not inside_epoch:
        return (
            f"The run already reached total_steps={total_steps} {unit}s at {where}; nothing "
            "to train. Pass a larger total_steps to continue it."
        )
    return None


__all__ = ["EARLY_STOPPING", "STOP_REQUESTED", "TOTAL_STEPS", "RunEnd", "finished_message"]
