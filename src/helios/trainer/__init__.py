"""The helios Trainer.

Public names: :py:class:`Trainer`, :py:class:`TrainingUnit`, :py:class:`TrainingState`,
:py:func:`find_last_checkpoint`, :py:func:`get_trainer_safe_types_for_load`,
:py:func:`register_trainer_types_for_safe_load`.

How to read it. One training step: ``loops.py`` (``TrainingLoop.run`` -> ``_train_epoch``,
the batch step written once -> ``_end_unit``, where validation, the checkpoint and the stop
decisions happen; the hook order is written once in its docstring). One save and one resume:
``checkpoints.py`` (``RunCheckpoint.save`` gathers every part's ``state_dict()``,
``RunCheckpoint.resume`` hands each part its ``load_state_dict()``; the parts of a run are
listed in ``Trainer._checkpoint_parts``). The rest, in the order a run uses it:

* ``trainer.py``: the Trainer's arguments and properties, ``fit``/``test``, set-up, and the
  list of checkpoint parts.
* ``arguments.py``: the checks of every constructor argument.
* ``launch.py``: running in one process, under ``torchrun``, or spawned per GPU.
* ``run_logs.py``: the run's log file and TensorBoard run, continued on resume.
* ``loops.py``: the training loop core and the validation/testing loop.
* ``checkpoints.py``: checkpoint parts, atomic saving, discovery and validated loading.
* ``preemption.py``: stopping at the next batch boundary on SIGTERM, SIGUSR1 or SIGINT.
* ``progress.py``: progress bars.
* ``state.py``: :py:class:`TrainingUnit` and :py:class:`TrainingState`.
"""

from .checkpoints import (
    find_last_checkpoint,
    get_trainer_safe_types_for_load,
    register_trainer_types_for_safe_load,
)
from .preemption import Preempted
from .state import TrainingState, TrainingUnit
from .trainer import Trainer

__all__ = [
    "Preempted",
    "Trainer",
    "TrainingState",
    "TrainingUnit",
    "find_last_checkpoint",
    "get_trainer_safe_types_for_load",
    "register_trainer_types_for_safe_load",
]
