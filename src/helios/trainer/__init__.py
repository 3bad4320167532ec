"""The helios Trainer.

Public names: :py:class:`Trainer`, :py:class:`TrainingUnit`, :py:class:`TrainingState`,
:py:func:`find_last_checkpoint`, :py:func:`find_best_checkpoint`,
:py:func:`get_trainer_safe_types_for_load`, :py:func:`register_trainer_types_for_safe_load`,
:py:class:`NonFiniteError`, :py:class:`CheckpointWriteError`.

Where each job lives:

* ``trainer.py``: the Trainer's arguments, properties, ``fit``/``test`` and set-up.
* ``arguments.py``: the checks of every constructor argument.
* ``loops.py``: the training, validation and testing loops, with the call order written once.
* ``checkpoints.py``: checkpoint names, atomic saving, discovery and validated loading.
* ``retention.py``: which checkpoints to keep (last N, best K) and the index of the best.
* ``async_save.py``: snapshots and the background writer of asynchronous saves.
* ``nonfinite.py``: the guard that stops training on a NaN/inf loss or model state.
* ``launch.py``: running in one process, under ``torchrun``, or spawned per GPU.
* ``progress.py``: progress bars.
* ``state.py``: :py:class:`TrainingUnit` and :py:class:`TrainingState`.
"""

from .async_save import CheckpointWriteError
from .checkpoints import (
    find_last_checkpoint,
    get_trainer_safe_types_for_load,
    register_trainer_types_for_safe_load,
)
from .nonfinite import NonFiniteError
from .retention import find_best_checkpoint
from .state import TrainingState, TrainingUnit
from .trainer import Trainer

__all__ = [
    "CheckpointWriteError",
    "NonFiniteError",
    "Trainer",
    "TrainingState",
    "TrainingUnit",
    "find_best_checkpoint",
    "find_last_checkpoint",
    "get_trainer_safe_types_for_load",
    "register_trainer_types_for_safe_load",
]
