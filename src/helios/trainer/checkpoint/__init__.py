"""Checkpoints: named parts gathered and restored, written atomically, found and read.

Reading order: :py:mod:`.parts` (the one part protocol, the reserved names and the table of
a run's parts), :py:mod:`.run_checkpoint` (one save, one resume), :py:mod:`.io` (atomic
writes and commits, validated safe loads; nothing else touches checkpoint files) and
:py:mod:`.layout` (names, keys and discovery). Around them:

* :py:mod:`.rank_state`: each rank's RNG states and sampler position (the per-rank part).
* :py:mod:`.loader_state`: each rank's position in a training stream (per rank too).
* :py:mod:`.model_part`: the model's part, the one that may be sharded.
* :py:mod:`.sharded`: the shards of a sharded model (Distributed Checkpoint folders), and
  :py:func:`export_full_checkpoint`.
* :py:mod:`.retention`: which checkpoints to keep and the index of the best.
* :py:mod:`.async_save`: snapshots and the background writer of asynchronous saves.
* :py:mod:`.environment`: the versions and the device that wrote each checkpoint.

For front ends and tools: :py:meth:`helios.trainer.Trainer.add_checkpoint_part` adds a
named part to every checkpoint of a trainer's runs; :py:func:`read_checkpoint` reads the
entries of a saved checkpoint without a model.
"""

from .io import (
    CheckpointWriteError,
    get_trainer_safe_types_for_load,
    read_checkpoint,
    register_trainer_types_for_safe_load,
)
from .layout import checkpoint_name, find_last_checkpoint, list_checkpoints
from .parts import RESERVED_NAMES, CheckpointPart, OwnedPart, PartTable, StateOwner
from .retention import find_best_checkpoint
from .run_checkpoint import CheckpointMismatchError, CheckpointNotSharedError, RunCheckpoint
from .sharded import export_full_checkpoint, load_full_state

__all__ = [
    "RESERVED_NAMES",
    "CheckpointMismatchError",
    "CheckpointNotSharedError",
    "CheckpointPart",
    "CheckpointWriteError",
    "OwnedPart",
    "PartTable",
    "RunCheckpoint",
    "StateOwner",
    "checkpoint_name",
    "export_full_checkpoint",
    "find_best_checkpoint",
    "find_last_checkpoint",
    "get_trainer_safe_types_for_load",
    "list_checkpoints",
    "load_full_state",
    "read_checkpoint",
    "register_trainer_types_for_safe_load",
]
