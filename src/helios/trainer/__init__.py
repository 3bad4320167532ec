"""The helios Trainer.

Public names: :py:class:`Trainer`, :py:class:`TrainingUnit`, :py:class:`TrainingState`,
:py:func:`find_last_checkpoint`, :py:func:`get_trainer_safe_types_for_load`,
:py:func:`register_trainer_types_for_safe_load`.

Where each job lives:

* ``trainer.py``: the Trainer's arguments, properties, ``fit``/``test`` and set-up.
* ``arguments.py``: the checks of every constructor argument.
* ``loops.py``: the training, validation and testing loops, with the call order written once.
* ``checkpoints.py``: checkpoint names, atomic saving, discovery and validated loading.
* ``launch.py``: running in one process, under ``torchrun``, or spawned per GPU.
* ``progress.py``: progress bars.
* ``state.py``: :py:class:`TrainingUnit` and :py:class:`TrainingState`.
"""

from .checkpoints import (
    find_last_checkpoint,
    get_trainer_safe_types_for_load,
    register_trainer_types_for_safe_load,
)
from .state import TrainingState, TrainingUnit
from .trainer import Trainer

__all__ = [
    "Trainer",
    "TrainingState",
    "TrainingUnit",
    "find_last_checkpoint",
    "get_trainer_safe_types_for_load",
    "register_trainer_types_for_safe_load",
]
