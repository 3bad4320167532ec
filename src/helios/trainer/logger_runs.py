"""The experiment loggers of a run: their part of the checkpoints, and the runs they open.

:py:class:`LoggerStates` is the loggers' checkpoint part (key ``loggers``): one state per
logger, so that a resumed run continues each logged run (see :py:mod:`helios.loggers`).

A run killed before its first checkpoint (a scheduler's requeue) has no checkpoint that
names the logged runs it opened. So when the loggers first log in a process, global
rank 0 writes their states into :py:data:`RECORD_NAME` in the checkpoint folder, and the
next durable checkpoint (which holds the same states) removes the file. A run that starts
again finds the file: each logger that its checkpoint does not give a logged run (there is
no checkpoint, or it was written before the logger logged anything) continues the run the
file names, dropping the points logged after the checkpoint's step (after step 0 without
one). The run says so in its log. The CSV file goes on, and the MLflow run is set back to
``RUNNING`` and continued, instead of a second file and a run stuck in ``RUNNING``.

Logging never fails training. Each logger's destination is checked before anything
trains (:py:meth:`LoggerStates.check_destinations`); a logger that raises while the run
trains (its run cannot be opened, say) is reported in one warning and left out for the
rest of the run (:py:meth:`LoggerStates.failed`).
"""

from __future__ import annotations

import json
import pathlib
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from helios.core import distributed as dist
from helios.core import logging
from helios.core.files import write_atomically

from .checkpoint.parts import CheckpointPart

if TYPE_CHECKING:
    from helios.loggers import ExperimentLogger

    from .state import TrainingState

RECORD_NAME = ".helios-logger-runs.json"
"""The file in the checkpoint folder naming the logged runs the newest checkpoint lacks."""


class LoggerStates(CheckpointPart):
    """The experiment loggers' part of a checkpoint (key ``loggers``), in logger order.

    On resume each logger is told to drop what it logged after the checkpoint's step.

    Args:
        loggers: the run's loggers.
        state: the training state (its ``current_iteration`` is the step of a checkpoint).
        folder: the checkpoint folder, where the record of opened runs is kept (``None``:
            no record, as on ranks other than 0).
    """

    name = "loggers"

    def __init__(
        self,
        loggers: Sequence[ExperimentLogger],
        state: TrainingState,
        folder: pathlib.Path | None = None,
    ) -> None:
        self._loggers = list(loggers)
        self._state = state
        self._record = folder / RECORD_NAME if folder is not None else None
        self._recorded = False
        self._failed: set[int] = set()

    @property
    def loggers(self) -> list[ExperimentLogger]:
        """The loggers that have not failed in this run."""
        return [logger for logger in self._loggers if id(logger) not in self._failed]

    def state_dict(self) -> list[dict[str, Any]] | None:
        """Return every logger's state (``None`` without loggers)."""
        if not self._loggers:
            return None
        return [logger.state_dict() for logger in self._loggers]

    def load_state_dict(self, state_dict: list[dict[str, Any]]) -> None:
        """Continue each logger's run from the checkpoint's step."""
        for logger, saved in zip(self._loggers, state_dict, strict=False):
            logger.load_state_dict(saved)

    def saving(self, path: pathlib.Path, state: TrainingState) -> Callable[[], None] | None:
        """Once the checkpoint (which names every logged run) is durable, drop the record."""
        record = self._record
        if record is None or not self._loggers:
            return None
        return lambda: record.unlink(missing_ok=True)

    # -- before training ---------------------------------------------------------------------

    def continue_recorded_runs(self) -> None:
        """Give each logger without a logged run from the checkpoint the recorded one."""
        record = self._read_record()
        for index, (logger, saved) in enumerate(zip(self._loggers, record, strict=False)):
            own = logger.saved_state
            if own is not None and own.get("run_id") is not None:
                continue
            if not isinstance(saved, Mapping) or saved.get("run_id") is None:
                continue
            try:
                logger.load_state_dict(saved)
            except (TypeError, ValueError, RuntimeError) as error:
                _warn(f"logger {index} ({type(logger).__name__}) ignores {self._record}: {error}")
                continue
            step = self._state.current_iteration
            message = (
                f"{type(logger).__name__}: continuing its run {saved['run_id']!r}, which a run "
                f"of this folder stopped before checkpointing it, from step {step} (the "
                "points logged after it are dropped)"
            )
            logging.get_root_logger().info(message)
            dist.global_print(message)

    def _read_record(self) -> list[Any]:
        if self._record is None or not self._record.is_file() or self._record.is_symlink():
            return []
        try:
            data = json.loads(self._record.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as error:
            _warn(f"the record of the logged runs {self._record} is unreadable: {error}")
            return []
        runs = data.get("loggers") if isinstance(data, dict) else None
        return runs if isinstance(runs, list) else []

    def check_destinations(self) -> None:
        """Check that every logger can write where it will (before training).

        Raises:
            helios.loggers.LoggerDestinationError: naming the logger and the path.
        """
        for logger in self._loggers:
            logger.check_destination()

    def resume_from_checkpoint_step(self) -> None:
        """Drop the points logged after the checkpoint the run resumed from."""
        for logger in self.loggers:
            if logger.saved_state is not None:
                try:
                    logger.resume_from(self._state.current_iteration)
                except Exception as error:
                    self.failed(logger, error)

    # -- while training ----------------------------------------------------------------------

    def failed(self, logger: ExperimentLogger, error: BaseException) -> None:
        """Report a logger's failure in one warning and leave it out for the rest of the run.

        Args:
            logger: the logger.
            error: what it raised.
        """
        self._failed.add(id(logger))
        _warn(
            f"the {type(logger).__name__} failed ({type(error).__name__}: {error}); training "
            "goes on without it for the rest of this run"
        )

    def logged(self) -> None:
        """Note that the loggers logged: the first time, record the runs they opened."""
        if self._recorded or self._record is None:
            return
        self._recorded = True
        states = [logger.state_dict() for logger in self._loggers]
        if not any(state.get("run_id") is not None for state in states):
            return
        text = json.dumps({"loggers": states}, indent=2, default=str).encode("utf-8")
        try:
            write_atomically(self._record, lambda file: file.write(text))
        except OSError as error:
            _warn(f"could not record the logged runs in {self._record}: {error}")

    def flush_and_close(self) -> None:
        """Flush and close every logger."""
        for logger in self._loggers:
            logger.close()


def _warn(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=3)
    logging.get_root_logger().warning(message)


__all__ = ["RECORD_NAME", "LoggerStates"]
