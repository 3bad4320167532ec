"""Checkpoint retention: keep the last N and the best K checkpoints, and an index of them.

Reading order: :py:class:`RetentionPolicy` (what to keep), :py:func:`select_kept` (the rule),
:py:class:`CheckpointRetention` (the record of one run: a checkpoint part, so a resumed run
keeps the same best K), :py:func:`find_best_checkpoint` (reads the index).

The rule, for the checkpoints a run wrote, oldest first:

* without ``keep_last`` and ``keep_best`` every checkpoint is kept (as before retention);
* otherwise the newest checkpoint (the resume point) is always kept, plus the newest
  ``keep_last`` ones, plus the ``keep_best`` ones with the best ``best_metric`` (ties: the
  older one wins).

Which checkpoints are ranked (carry a metric), pinned by ``tests/helios/trainer/
test_retention_ranking.py``:

* Only a checkpoint written at the position of a validation that ran in this process
  (same batch count: the save that follows the validation at the end of its unit) carries
  ``best_metric``: the value in the model's ``metrics`` table when it is saved. Any other
  checkpoint (one saved between validations, a preemption checkpoint mid-epoch or during
  a validation cycle that a signal cut short) is unranked: it only counts as one of the
  last, whatever stale value the table still holds.
* A typo: when the first validation cycle of a process ends and its ``metrics`` table has
  no ``best_metric`` entry, :py:meth:`CheckpointRetention.validated` raises ``ValueError``
  naming the metrics there are, before that unit's checkpoint is written and before
  anything is deleted.
* A metric missing at a later validation, or not a finite number (NaN, inf, a tensor
  with several elements, a string), leaves that checkpoint unranked, with one warning per
  run.

Durability: the record inside checkpoint ``N`` already lists what ``N`` makes obsolete
(``pending_deletion``); those files are deleted only once ``N`` is on disk (fsynced and
renamed), and a run resumed from ``N`` deletes any of them a crash left behind. Checkpoints
the run never recorded (written without retention, or by hand) are never deleted, and the
names in a record or the index are trusted only when they are bare checkpoint names of
this run (:py:func:`~helios.trainer.checkpoint.layout.is_checkpoint_name`): a record that
names ``../..``, an absolute path, a hidden file or another run's checkpoint deletes
nothing, and the index never sends :py:func:`find_best_checkpoint` outside the folder.

The index ``checkpoints.json`` in the checkpoint folder (written atomically after every save)
names the kept checkpoints with their metric, the best one and the newest one, so the best
checkpoint is found without opening any checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import shutil
import warnings
from collections.abc import Callable, Mapping
from typing import Any

from helios.core import logging
from helios.core.files import write_atomically
from helios.core.training_state import TrainingState

from .layout import INDEX_NAME, is_checkpoint_name, is_sharded_checkpoint
from .parts import CheckpointPart

_INDEX_VERSION = 1


@dataclasses.dataclass(frozen=True)
class RetentionPolicy:
    """Which checkpoints of a run to keep.

    Attributes:
        keep_last: keep the newest this many checkpoints (``None``: see the module rule).
        keep_best: keep this many checkpoints with the best ``best_metric``.
        best_metric: the key of the model's ``metrics`` table that ranks checkpoints; also
            names the best checkpoint in the index when ``keep_best`` is not set.
        best_mode: ``"max"`` (higher is better) or ``"min"``.
    """

    keep_last: int | None = None
    keep_best: int | None = None
    best_metric: str | None = None
    best_mode: str = "max"

    @property
    def prunes(self) -> bool:
        """Whether any checkpoint is ever deleted."""
        return self.keep_last is not None or self.keep_best is not None

    @property
    def is_active(self) -> bool:
        """Whether the run keeps a retention record at all."""
        return self.prunes or self.best_metric is not None


@dataclasses.dataclass(frozen=True)
class RetainedCheckpoint:
    """One checkpoint in the retention record.

    Attributes:
        name: the file name (in the checkpoint folder).
        epoch: the global epoch it was saved at.
        iteration: the iteration it was saved at.
        metric: the value of the ranking metric when it was saved (``None``: unranked).
    """

    name: str
    epoch: int
    iteration: int
    metric: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the entry as plain data."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RetainedCheckpoint:
        """Rebuild an entry from :py:meth:`to_dict`."""
        metric = data.get("metric")
        return cls(
            name=str(data["name"]),
            epoch=int(data["epoch"]),
            iteration=int(data["iteration"]),
            metric=None if metric is None else float(metric),
        )


def _ranked(entries: list[RetainedCheckpoint], policy: RetentionPolicy) -> list[RetainedCheckpoint]:
    """The entries with a metric, best first (ties: the older first)."""
    order = [(i, e) for i, e in enumerate(entries) if e.metric is not None]
    sign = -1.0 if policy.best_mode == "max" else 1.0
    order.sort(key=lambda item: (sign * float(item[1].metric), item[0]))  # type: ignore[arg-type]
    return [entry for _, entry in order]


def select_kept(
    entries: list[RetainedCheckpoint], policy: RetentionPolicy
) -> list[RetainedCheckpoint]:
    """Apply the retention rule to a run's checkpoints.

    Args:
        entries: the checkpoints, oldest first (the last one is the newest).
        policy: what to keep.

    Returns:
        The entries to keep, in the same order.
    """
    if not policy.prunes or not entries:
        return list(entries)
    keep = {entries[-1].name}
    if policy.keep_last is not None:
        keep.update(e.name for e in entries[-policy.keep_last :])
    if policy.keep_best is not None:
        keep.update(e.name for e in _ranked(entries, policy)[: policy.keep_best])
    return [e for e in entries if e.name in keep]


def best_of(entries: list[RetainedCheckpoint], policy: RetentionPolicy) -> str | None:
    """Return the name of the best ranked entry, if any."""
    ranked = _ranked(entries, policy)
    return ranked[0].name if ranked else None


def metric_value(metrics: Mapping[str, Any], name: str) -> float | None:
    """Read a metric as a finite float (``None`` when missing, non-numeric or not finite)."""
    if name not in metrics:
        return None
    value = metrics[name]
    try:
        number = float(value.item() if hasattr(value, "item") else value)
    except (TypeError, ValueError, RuntimeError):
        return None
    return number if math.isfinite(number) else None


def write_json_atomically(
    data: Any, path: pathlib.Path, indent: int = 2, sort_keys: bool = False
) -> None:
    """Write JSON through a synced temporary file renamed over ``path``.

    Args:
        data: the JSON-serialisable data.
        path: the final path.
        indent: passed to ``json.dump``.
        sort_keys: passed to ``json.dump``.
    """
    text = json.dumps(data, indent=indent, sort_keys=sort_keys).encode("utf-8")
    write_atomically(path, lambda file: file.write(text))


@dataclasses.dataclass(frozen=True)
class RetentionUpdate:
    """What one save changes on disk once its file is durable.

    Attributes:
        folder: the checkpoint folder.
        delete: names of the checkpoints to delete.
        index: the new contents of the index.
    """

    folder: pathlib.Path
    delete: tuple[str, ...]
    index: dict[str, Any]
    save_name: str | None = None

    def apply(self) -> None:
        """Write the index, then delete the obsolete checkpoints (call once durable).

        Only bare checkpoint names of the run are deleted, and never through a link.
        """
        write_json_atomically(self.index, self.folder / INDEX_NAME)
        for name in self.delete:
            path = self.folder / name
            if not is_checkpoint_name(name, self.save_name) or path.is_symlink():
                _refuse_name(name, self.folder)
                continue
            try:
                if path.is_dir():  # a sharded checkpoint
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)
            except OSError as error:
                logging.get_root_logger().warning(
                    f"could not delete old checkpoint {path}: {error}"
                )
            else:
                logging.get_root_logger().info(f"Deleted old checkpoint {path}")


class CheckpointRetention(CheckpointPart):
    """The retention record of one run; a checkpoint part (key ``checkpoint_retention``).

    :py:meth:`saving` (:py:meth:`register`) is called on the saving rank for each new
    checkpoint before the parts are gathered, so the record saved in a checkpoint includes
    that checkpoint; what the checkpoint makes obsolete is deleted once it is durable.

    Args:
        policy: what to keep.
        folder: the checkpoint folder of the run.
        metrics: returns the model's ``metrics`` table.
        save_name: the model's save name: a name in a resumed record that is not a
            checkpoint name of this run (:py:func:`~.layout.is_checkpoint_name`) is dropped.
    """

    name = "checkpoint_retention"

    def __init__(
        self,
        policy: RetentionPolicy,
        folder: pathlib.Path | None,
        metrics: Callable[[], Mapping[str, Any]],
        save_name: str | None = None,
    ) -> None:
        self.policy = policy
        self.folder = folder
        self.save_name = save_name
        self._metrics = metrics
        self._entries: list[RetainedCheckpoint] = []
        # Deletions the newest saved checkpoint made due (saved with it), and those a
        # resumed record still owes (done after the first save of the resumed run).
        self._pending: list[str] = []
        self._leftover: list[str] = []
        self._warned_missing = False
        # The batch count of the last validation that ran in this process (None: none yet).
        self._validated_at: int | None = None

    @property
    def entries(self) -> list[RetainedCheckpoint]:
        """The kept checkpoints, oldest first."""
        return list(self._entries)

    def state_dict(self) -> dict[str, Any] | None:
        """Return the record (``None`` without retention: the file stays as before)."""
        if not self.policy.is_active:
            return None
        return {
            "entries": [e.to_dict() for e in self._entries],
            "pending_deletion": list(self._pending),
            "best_metric": self.policy.best_metric,
            "best_mode": self.policy.best_mode,
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore the record of a resumed run.

        Entries ranked by another metric or direction than this run's lose their rank. A
        name that is not a checkpoint name of this run is dropped with a warning: the record
        comes from a file, and nothing it names outside the run's checkpoints is deleted.
        """
        if not isinstance(state_dict, Mapping):
            return
        entries = []
        for data in _list(state_dict.get("entries")):
            name = data.get("name") if isinstance(data, Mapping) else data
            if self._trusted(name):
                entries.append(RetainedCheckpoint.from_dict(data))
        same_ranking = (
            state_dict.get("best_metric") == self.policy.best_metric
            and state_dict.get("best_mode") == self.policy.best_mode
        )
        if not same_ranking:
            entries = [dataclasses.replace(e, metric=None) for e in entries]
        self._entries = entries
        self._pending = [n for n in _list(state_dict.get("pending_deletion")) if self._trusted(n)]
        self._leftover = list(self._pending)

    def _trusted(self, name: Any) -> bool:
        if is_checkpoint_name(name, self.save_name):
            return True
        _refuse_name(name, self.folder)
        return False

    def validated(self, state: TrainingState) -> None:
        """Note that a validation cycle ended at ``state``; check the metric's name once.

        The checkpoint saved at this position (same batch count) carries the metric.

        Args:
            state: the training state at the end of the cycle.

        Raises:
            ValueError: at the first validation of the process, if the model's ``metrics``
                table has no ``best_metric`` entry (a typo, before anything is deleted).
        """
        name = self.policy.best_metric
        if name is not None and self._validated_at is None:
            metrics = self._metrics()
            if name not in metrics:
                raise ValueError(
                    f"chkpt_best_metric={name!r} is not in the model's metrics table after "
                    f"the first validation cycle; the metrics there are {sorted(metrics)}. "
                    "Pass the name of one of them (nothing was deleted)"
                )
        self._validated_at = state.global_iteration

    def _current_metric(self, state: TrainingState) -> float | None:
        """The metric a checkpoint at ``state`` carries (``None``: it is unranked)."""
        name = self.policy.best_metric
        if name is None or self._validated_at != state.global_iteration:
            return None  # not written right after a validation: any value would be stale
        metrics = self._metrics()
        value = metric_value(metrics, name)
        if value is None and not self._warned_missing:
            self._warned_missing = True
            message = (
                f"chkpt_best_metric={name!r} is not a finite number in the model's metrics "
                f"table after a validation cycle ({metrics.get(name, 'missing')!r}; keys: "
                f"{sorted(metrics)}); the checkpoints saved then are not ranked as best"
            )
            warnings.warn(message, RuntimeWarning, stacklevel=2)
            logging.get_root_logger().warning(message)
        return value

    def saving(self, path: pathlib.Path, state: TrainingState) -> Callable[[], None] | None:
        """Record a checkpoint about to be written (see :py:meth:`register`).

        Args:
            path: the path of the new checkpoint.
            state: the training state it records.

        Returns:
            Applies the retention update (index, deletions) once the checkpoint is durable;
            ``None`` without retention.
        """
        if not self.policy.is_active:
            return None
        metric = self._current_metric(state)
        update = self.register(path, state.global_epoch, state.current_iteration, metric)
        return update.apply if update is not None else None

    def register(
        self, path: pathlib.Path, epoch: int, iteration: int, metric: float | None = None
    ) -> RetentionUpdate | None:
        """Record a checkpoint about to be written and decide what it makes obsolete.

        Args:
            path: the path of the new checkpoint.
            epoch: its global epoch.
            iteration: its iteration.
            metric: the value of ``best_metric`` it carries (``None``: unranked).

        Returns:
            What to do once the new file is durable (``None`` without retention).
        """
        if not self.policy.is_active:
            return None
        entry = RetainedCheckpoint(path.name, epoch, iteration, metric)
        candidates = [e for e in self._entries if e.name != entry.name] + [entry]
        kept = select_kept(candidates, self.policy)
        kept_names = {e.name for e in kept}
        dropped = [e.name for e in candidates if e.name not in kept_names]
        # Leftovers a crash kept from being deleted, minus any name written again.
        delete = tuple(dict.fromkeys(n for n in [*self._leftover, *dropped] if n not in kept_names))
        self._entries = kept
        self._pending, self._leftover = list(delete), []
        return RetentionUpdate(path.parent, delete, self._index(), self.save_name)

    def _index(self) -> dict[str, Any]:
        return {
            "version": _INDEX_VERSION,
            "best_metric": self.policy.best_metric,
            "best_mode": self.policy.best_mode,
            "best": best_of(self._entries, self.policy),
            "newest": self._entries[-1].name if self._entries else None,
            "checkpoints": [e.to_dict() for e in self._entries],
        }


def _list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else []


def _refuse_name(name: Any, folder: pathlib.Path | None) -> None:
    message = (
        f"the retention record names {name!r}, which is not a checkpoint name of this run "
        f"in {folder}; it is left alone (a retention record deletes only the run's own "
        "checkpoints, by their bare names)"
    )
    warnings.warn(message, RuntimeWarning, stacklevel=3)
    logging.get_root_logger().warning(message)


def read_index(root: pathlib.Path) -> dict[str, Any] | None:
    """Read the retention index of a checkpoint folder.

    Args:
        root: the checkpoint folder.

    Returns:
        The index, or ``None`` if there is none or it cannot be read.
    """
    path = root / INDEX_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def find_best_checkpoint(root: pathlib.Path | None) -> pathlib.Path | None:
    """Find the best checkpoint of a folder from its index, without opening checkpoints.

    The index exists when the run was trained with ``chkpt_best_metric`` (see
    :py:class:`RetentionPolicy`).

    Args:
        root: the checkpoint folder (``<chkpt_root>/<save_name>``).

    Returns:
        The path of the best checkpoint (a file, or a sharded checkpoint's folder), or
        ``None`` if no index names one that exists. A name that is not a bare checkpoint
        name, or a link, is never followed.
    """
    if root is None:
        return None
    index = read_index(root)
    best = None if index is None else index.get("best")
    if not is_checkpoint_name(best):
        return None
    path = root / str(best)
    if path.is_symlink() or not (path.is_file() or is_sharded_checkpoint(path)):
        return None
    return path


__all__ = [
    "INDEX_NAME",
    "CheckpointRetention",
    "RetainedCheckpoint",
    "RetentionPolicy",
    "RetentionUpdate",
    "find_best_checkpoint",
    "read_index",
    "select_kept",
    "write_json_atomically",
]
