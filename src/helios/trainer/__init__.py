"""The helios Trainer.

Public names: :py:class:`Trainer`, :py:class:`TrainingUnit`, :py:class:`TrainingState`,
:py:func:`find_last_checkpoint`, :py:func:`find_best_checkpoint`,
:py:func:`get_trainer_safe_types_for_load`, :py:func:`register_trainer_types_for_safe_load`,
:py:class:`NonFiniteError`, :py:class:`CheckpointWriteError`.

How to read it. One training step: ``run.py`` (``FitRun.main``: the whole body of one
process, top to bottom) -> ``loops.py`` (``TrainingLoop.run`` -> ``_train_epoch``, the batch
step written once -> ``_end_unit``, where validation, the checkpoint and the stop decisions
happen; the hook order is written once in its docstring). One save and one resume: the
``checkpoint`` package (``parts.py``: the one part protocol and the table of a run's parts;
``run_checkpoint.py``: ``RunCheckpoint.save`` gathers every part's ``state_dict()``,
``RunCheckpoint.resume`` hands each part its ``load_state_dict()``; ``io.py``: the files).
The rest, in the order a run uses it:

* ``trainer.py``: the Trainer: arguments, properties, ``fit``/``test``, extra parts.
* ``config.py`` and ``arguments.py``: the arguments checked into a frozen run configuration.
* ``launch.py``: where a run's body runs (one process, ``torchrun``, spawned per GPU) and
  the context of each process (ranks, device, result channel).
* ``run.py``: the run of one process: lock, set-up, parts, loops, fit/test bodies.
* ``run_folder.py``: one run per checkpoint folder (a lock naming its holder) and a
  writable folder checked before training.
* ``run_logs.py``: the run's log file and TensorBoard run, continued on resume.
* ``loops.py``: the training loop core and the validation/testing loop.
* ``checkpoint/``: parts, saving and resuming, IO, sharded checkpoints, retention,
  asynchronous saves (its ``__init__`` gives the reading order).
* ``loader_seed.py``: the run's ``random_seed`` as the seed the loaders shuffle by.
* ``logger_runs.py``: the experiment loggers' checkpoint part, the record of the logged
  runs the newest checkpoint lacks, and logger failures that never fail training.
* ``nonfinite.py``: the guard that stops training on a NaN/inf loss or model state.
* ``preemption.py``: stopping at the next batch boundary on SIGTERM, SIGUSR1 or SIGINT.
* ``run_end.py``: how a run ended (a stop is kept in the checkpoint); finished runs stay
  finished.
* ``reporting.py``: what a run reports: console lines, the bar's losses, logger metrics.
* ``console.py``: the formatting of those console lines.
* ``progress.py``: progress bars.
* ``failures.py``: how a failed ``fit``/``test`` is shown (the hook it came from).
* ``state.py``: :py:class:`TrainingUnit` and :py:class:`TrainingState` (defined in
  :py:mod:`helios.core.training_state`, below the model and the plug-ins that use them).
"""

from .checkpoint import (
    CheckpointWriteError,
    export_full_checkpoint,
    find_best_checkpoint,
    find_last_checkpoint,
    get_trainer_safe_types_for_load,
    register_trainer_types_for_safe_load,
)
from .nonfinite import NonFiniteError
from .preemption import Preempted
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
