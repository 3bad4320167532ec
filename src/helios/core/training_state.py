"""The training unit and the training state saved in every checkpoint.

They live here, below the model, the plug-ins and the trainer, which all use them; the
public names are :py:class:`helios.trainer.TrainingUnit` and
:py:class:`helios.trainer.TrainingState`. A checkpoint records the state under its module
of Helios 1.3 (``helios.trainer.state``), so checkpoints read the same with every version.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any


class TrainingUnit(enum.Enum):
    """The unit in which ``total_steps`` and the frequencies are counted."""

    ITERATION = 0
    EPOCH = 1

    @classmethod
    def from_str(cls, label: str) -> TrainingUnit:
        """Convert ``"iteration"`` or ``"epoch"`` to the corresponding unit.

        Args:
            label: the name of the unit.

        Returns:
            The unit.

        Raises:
            ValueError: if the label is not one of the two names.
        """
        if label == "iteration":
            return cls.ITERATION
        if label == "epoch":
            return cls.EPOCH
        raise ValueError(
            f"invalid training unit. Expected one of 'iteration' or 'epoch' but received '{label}'"
        )


@dataclasses.dataclass
class TrainingState:
    """The position of a run, saved in checkpoints so a resumed run continues exactly.

    Attributes:
        current_iteration: iterations in which gradients are updated (counts accumulated
            steps once); equals ``global_iteration`` without gradient accumulation.
        global_iteration: every batch seen so far.
        global_epoch: the current epoch, counted from 1 while it runs.
        validation_cycles: validation cycles completed.
        dataset_iter: batches of the current epoch already consumed (0 between epochs).
        early_stop_count: consecutive validation cycles without improvement.
        average_iter_time: moving average of the time per batch, in seconds.
        running_iter: iterations since the last validation cycle. The running sums of the
            losses add one term per batch, so their mean is the sum divided by
            ``running_iter * accumulation_steps`` in the ITERATION unit (by
            ``running_iter`` in the EPOCH unit, where every batch is an iteration).
    """

    current_iteration: int = 0
    global_iteration: int = 0
    global_epoch: int = 0
    validation_cycles: int = 0
    dataset_iter: int = 0
    early_stop_count: int = 0
    average_iter_time: float = 0
    running_iter: int = 0

    def state_dict(self) -> TrainingState:
        """Return a copy of the state, the ``training_state`` part of a checkpoint."""
        return dataclasses.replace(self)

    def load_state_dict(self, state_dict: TrainingState) -> None:
        """Take over every field of a saved state.

        Args:
            state_dict: a state returned by :py:meth:`state_dict`.
        """
        for field in dataclasses.fields(self):
            setattr(self, field.name, getattr(state_dict, field.name))

    def dict(self) -> dict[str, Any]:
        """Return the state as a plain dictionary."""
        return dataclasses.asdict(self)


# Pickled (torch.save) under the module name checkpoints have always recorded.
TrainingUnit.__module__ = TrainingState.__module__ = "helios.trainer.state"
