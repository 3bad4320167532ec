"""The parts of a checkpoint: one protocol, and the table of a run's parts.

Every piece of state that goes into a checkpoint belongs to one owner, which gives it
through ``state_dict()`` and takes it back through ``load_state_dict()``. A
:py:class:`CheckpointPart` is such an owner with a name: its key in the checkpoint. The
hooks beyond the two methods have defaults that fit a part written by rank 0 under its
name, so a part overrides only what it does differently:

* where its state lives in the file (:py:meth:`CheckpointPart.write`,
  :py:meth:`CheckpointPart.read`: the log part keeps Helios 1.2.7's top-level keys
  ``log_path`` and ``run_path``; the per-rank part fills each rank's entry);
* what a save changes once the file is durable (:py:meth:`CheckpointPart.saving`: the
  retention record deletes old checkpoints);
* whether its state is sharded (:py:attr:`CheckpointPart.is_sharded`,
  :py:meth:`CheckpointPart.prepare_to_load`: the model of an FSDP2 run).

Any object with ``state_dict()`` and ``load_state_dict()`` (a :py:class:`StateOwner`: a
plug-in, a pyblaze run's records, a front end's resolved configuration) becomes a part with
:py:class:`OwnedPart`. :py:class:`PartTable` holds the parts of one run, in restore order:

    logs, model, running_losses, precision, loader_seed, <plug-ins>, <extra parts>,
    training_state, preemption, loggers, run_end, environment, checkpoint_retention;
    per rank: rng, sampler, loader

The names helios uses are reserved (:py:data:`RESERVED_NAMES`): a plug-in id or an extra
part taking one is refused before anything trains, with a message naming both the part and
what helios keeps under that name. Extra parts are added with
:py:meth:`helios.trainer.Trainer.add_checkpoint_part`.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol, runtime_checkable

from helios.core.training_state import TrainingState

RESERVED_NAMES: Mapping[str, str] = {
    "version": "the version of helios that wrote the checkpoint",
    "rng": "rank 0's RNG states",
    "ranks": "every rank's RNG states, sampler position and stream position",
    "loader": "a rank's position in its training stream (in its entry of ranks)",
    "sharded_parts": "the list of the parts written as shards",
    "logs": "the run's log file and TensorBoard run",
    "log_path": "the run's log file",
    "run_path": "the run's TensorBoard run",
    "tensorboard_events": "the sizes of the run's TensorBoard event files",
    "model": "the model's state_dict()",
    "running_losses": "the model's running losses",
    "precision": "the run's precision and gradient scaler",
    "loader_seed": "the seed the loaders shuffle by (the run's random_seed)",
    "training_state": "the TrainingState",
    "preemption": "the signal that stopped the run",
    "loggers": "the experiment loggers' states",
    "run_end": "the reason the run ended",
    "environment": "the versions and the device that wrote the checkpoint",
    "checkpoint_retention": "the record of the checkpoints kept",
}
"""The checkpoint keys helios keeps its own state under, with what each holds."""


@runtime_checkable
class StateOwner(Protocol):
    """An object whose state can be saved and restored."""

    def state_dict(self) -> Any:
        """Return the state to save (``None``: nothing to save this time)."""

    def load_state_dict(self, state_dict: Any) -> None:
        """Restore a state returned by :py:meth:`state_dict`."""


class CheckpointPart:
    """One named part of every checkpoint of a run (see the module docstring).

    Subclasses give the part its :py:attr:`name` and implement :py:meth:`state_dict` and
    :py:meth:`load_state_dict`; every other hook has a default.
    """

    name: str
    """The part's key in the checkpoint (a class attribute of helios's own parts)."""

    per_rank = False
    """Whether every rank saves its own state (in its entry of ``ranks``), not rank 0."""

    def state_dict(self) -> Any:
        """Return the state to save (``None``: the checkpoint gets no entry)."""
        raise NotImplementedError

    def load_state_dict(self, state_dict: Any) -> None:
        """Restore a state returned by :py:meth:`state_dict`."""
        raise NotImplementedError

    @property
    def keys(self) -> tuple[str, ...]:
        """The keys of the checkpoint this part writes (its name by default)."""
        return (self.name,)

    def write(self, contents: dict[str, Any]) -> None:
        """Put the part's state into the checkpoint's contents (rank 0's, or a rank entry).

        Args:
            contents: the contents gathered so far.
        """
        state = self.state_dict()
        if state is not None:
            contents[self.name] = state

    def read(self, saved: Mapping[str, Any]) -> None:
        """Take the part's state from a loaded checkpoint (nothing if it has no entry).

        Args:
            saved: the loaded contents (or this rank's entry, for a per-rank part).
        """
        if self.name in saved:
            self.load_state_dict(saved[self.name])

    def saving(self, path: pathlib.Path, state: TrainingState) -> Callable[[], None] | None:
        """Note a checkpoint about to be written (on the writing rank, before gathering).

        Args:
            path: the checkpoint's path.
            state: the training state it records.

        Returns:
            What to do once the checkpoint is durable, or ``None``.
        """
        return None

    @property
    def is_sharded(self) -> bool:
        """Whether the state is ``DTensor`` shards now (every rank writes its own)."""
        return False

    def prepare_to_load(self) -> None:
        """Create the state that a sharded load fills in (an optimizer's moments)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class OwnedPart(CheckpointPart):
    """A part whose state is that of another object (a plug-in, an extra part).

    Args:
        name: the part's key in the checkpoint.
        owner: the object that gives and takes the state.
    """

    def __init__(self, name: str, owner: StateOwner) -> None:
        self.name = name
        self.owner = owner

    def state_dict(self) -> Any:
        """Return the owner's state."""
        return self.owner.state_dict()

    def load_state_dict(self, state_dict: Any) -> None:
        """Hand the owner its saved state."""
        self.owner.load_state_dict(state_dict)


def check_part_name(name: object, owner: str, taken: Mapping[str, str] | None = None) -> str:
    """Check the name of a part added to helios's parts: a free, unreserved string.

    Args:
        name: the name.
        owner: who adds the part, for the message (``"plug-in 'model' (MyPlugin)"``).
        taken: names already in use, with who uses them.

    Returns:
        The name.

    Raises:
        TypeError: if the name is not a string.
        ValueError: if it is empty, reserved by helios, or taken.
    """
    if not isinstance(name, str):
        raise TypeError(f"the checkpoint part name of {owner} must be a str, but received {name!r}")
    if not name:
        raise ValueError(f"the checkpoint part name of {owner} must not be empty")
    if name in RESERVED_NAMES:
        raise ValueError(
            f"{owner} cannot be saved in checkpoints under the name {name!r}: helios keeps "
            f"{RESERVED_NAMES[name]} there. Give it another name (reserved: "
            f"{', '.join(sorted(RESERVED_NAMES))})"
        )
    if taken is not None and name in taken:
        raise ValueError(
            f"{owner} cannot be saved in checkpoints under the name {name!r}: "
            f"{taken[name]} is saved under it. Give one of them another name"
        )
    return name


class PartTable:
    """The parts of one run's checkpoints, in restore order (see the module docstring).

    Helios adds its own parts with :py:meth:`add`; plug-ins and extra parts come through
    :py:meth:`add_extra`, which refuses reserved and taken names.
    """

    def __init__(self) -> None:
        self._shared: dict[str, CheckpointPart] = {}
        self._per_rank: dict[str, CheckpointPart] = {}
        self._owners: dict[str, str] = {}

    def add(self, *parts: CheckpointPart) -> None:
        """Add helios's own parts (their names may be reserved ones).

        Args:
            *parts: the parts, in restore order.
        """
        for part in parts:
            table = self._per_rank if part.per_rank else self._shared
            table[part.name] = part
            self._owners.update(dict.fromkeys(part.keys, f"helios's part {part.name!r}"))

    def add_extra(self, part: CheckpointPart, owner: str) -> None:
        """Add a part that is not helios's own (a plug-in's, an extra part).

        Args:
            part: the part.
            owner: who adds it, for messages.

        Raises:
            ValueError: if one of its keys is reserved or already taken.
        """
        for key in part.keys:
            check_part_name(key, owner, self._owners)
        self._shared[part.name] = part
        self._owners.update(dict.fromkeys(part.keys, owner))

    def __iter__(self) -> Iterator[CheckpointPart]:
        """The shared parts (written by rank 0), in restore order."""
        return iter(self._shared.values())

    def __getitem__(self, name: str) -> CheckpointPart:
        return self._shared.get(name) or self._per_rank[name]

    def __contains__(self, name: object) -> bool:
        return name in self._shared or name in self._per_rank

    @property
    def per_rank(self) -> list[CheckpointPart]:
        """The per-rank parts (every rank writes its own entry), in order."""
        return list(self._per_rank.values())

    def names(self) -> list[str]:
        """The names of every part: shared ones in order, then per-rank ones."""
        return [*self._shared, *self._per_rank]


def add_extra_parts(
    table: PartTable, plugins: Mapping[str, StateOwner], extras: Mapping[str, StateOwner]
) -> None:
    """Add a run's plug-ins, then its extra parts, to a table (in that restore order).

    Args:
        table: the table.
        plugins: the plug-ins by id.
        extras: the extra parts by name
            (:py:meth:`helios.trainer.Trainer.add_checkpoint_part`).

    Raises:
        ValueError: if a name is reserved or taken, naming both parts.
    """
    for plug_id, plugin in plugins.items():
        owner = f"plug-in {plug_id!r} ({type(plugin).__name__})"
        table.add_extra(OwnedPart(plug_id, plugin), owner)
    for name, extra in extras.items():
        table.add_extra(OwnedPart(name, extra), extra_part_owner(name, extra))


def extra_part_owner(name: str, owner: object) -> str:
    """How messages name an extra part."""
    return f"the extra checkpoint part {name!r} ({type(owner).__name__})"


__all__ = [
    "RESERVED_NAMES",
    "CheckpointPart",
    "OwnedPart",
    "PartTable",
    "StateOwner",
    "add_extra_parts",
    "check_part_name",
    "extra_part_owner",
]
