"""The helios Trainer.

Public names: :py:class:`Trainer`, :py:class:`TrainingUnit`, :py:class:`TrainingState`,
:py:func:`find_last_checkpoint`, :py:func:`find_best_checkpoint`,
:py:func:`get_trainer_safe_types_for_load`, :py:func:`register_trainer_types_for_safe_load`,
:py:class:`NonFiniteError`, :py:class:`CheckpointWriteError`.

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
* ``retention.py``: which checkpoints to keep (last N, best K) and the index of the best.
* ``async_save.py``: snapshots and the background writer of asynchronous saves.
* ``nonfinite.py``: the guard that stops training on a NaN/inf loss or model state.
* ``preemption.py``: stopping at the next batch boundary on SIGTERM, SIGUSR1 or SIGINT.
* ``run_end.py``: how a run ended (a stop is kept in the checkpoint); finished runs stay
  finished.
* ``run_folder.py``: one run per checkpoint folder (a lock naming its holder) and a
  writable folder checked before training.
* ``progress.py``: progress bars.
* ``sharded_checkpoint.py``: checkpoints of sharded models (Distributed Checkpoint folders).
* ``state.py``: :py:class:`TrainingUnit` and :py:class:`TrainingState`.
"""

from .async_save import CheckpointWriteError
from .checkpoints import (
    find_last_checkpoint,
    get_trainer_safe_types_for_load,
    register_trainer_types_for_safe_load,
)
from .nonfinite import NonFiniteError
from .preemption import Preempted
from .retention import find_best_checkpoint
from .sharded_checkpoint import export_full_checkpoint
from .state import TrainingState, TrainingUnit
from .trainer import Trainer

__all__ = [
    "CheckpointWriteError",
    "NonFiniteError",
    "Preempted",
    "Trainer",
    "TrainingState",
    "TrainingUnit",
    "export_full_checkpoint",
    "find_best_checkpoint",
    "find_last_checkpoint",
    "get_trainer_safe_types_for_load",
    "register_trainer_types_for_safe_load",
]
