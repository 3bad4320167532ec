"""The log file and TensorBoard run of a training run, continued when the run resumes.

A resumed run continues the log file and the TensorBoard run of its checkpoint, found by
name under the roots given to *this* run (``log_path`` and ``run_path``): a run folder that
was moved or copied logs into its own folders, and a resume given new roots uses them. The
checkpoint also records the size of every TensorBoard event file of the run when it was
written; a resume that trains truncates the event files to those sizes and deletes event
files created later, so the points that the killed run logged after its last checkpoint
(and that the resumed run logs again) appear once. A rerun of a finished run trains nothing
and purges nothing.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
from collections.abc import Mapping
from typing import Any

from helios.core import distributed as dist
from helios.core import logging

from .checkpoint.parts import CheckpointPart

EVENT_FILE_PATTERN = "events.out.tfevents.*"
"""The names of TensorBoard event files."""


class RunLogs(CheckpointPart):
    """Opens a run's log file and TensorBoard run: new ones, or those of its checkpoint.

    It is a checkpoint part (``logs``) whose state lies at the top of the checkpoint, under
    Helios 1.2.7's reference keys ``log_path`` and ``run_path`` (absolute, where the run
    logged when it saved), and ``tensorboard_events``, the sizes of the run's event files
    by path relative to the run folder.

    Args:
        run_name: the name of the run.
        log_root: the folder of log files, or ``None`` when file logging is off.
        runs_root: the folder of TensorBoard runs, or ``None`` when TensorBoard is off.
    """

    name = "logs"

    def __init__(
        self, run_name: str, log_root: pathlib.Path | None, runs_root: pathlib.Path | None
    ) -> None:
        self._run_name = run_name
        self._log_root = log_root
        self._runs_root = runs_root
        self._opened = False
        self._saved_log: pathlib.Path | None = None
        self._saved_run: pathlib.Path | None = None
        self._saved_events: dict[str, int] | None = None

    @property
    def keys(self) -> tuple[str, ...]:
        """The checkpoint's top-level keys of this part."""
        return ("log_path", "run_path", "tensorboard_events")

    def write(self, contents: dict[str, Any]) -> None:
        """Put ``log_path``, ``run_path`` and ``tensorboard_events`` into the checkpoint."""
        contents.update({k: v for k, v in self.state_dict().items() if v is not None})

    def read(self, saved: Mapping[str, Any]) -> None:
        """Take the three keys from a checkpoint (missing ones as ``None``)."""
        self.load_state_dict({key: saved.get(key) for key in self.keys})

    def state_dict(self) -> dict[str, Any]:
        """Return where the run logs and how far its event files go, for the checkpoint.

        The TensorBoard writer is flushed first, so the sizes cover every point logged
        before the checkpoint.
        """
        writer = logging.get_tensorboard_writer() if self._runs_root is not None else None
        run_dir = writer.run_path if writer is not None else None
        events = None
        if writer is not None and run_dir is not None:
            writer.flush()
            events = event_file_sizes(run_dir)
        return {
            "log_path": logging.get_root_logger().log_file if self._log_root else None,
            "run_path": run_dir,
            "tensorboard_events": events,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keep the log file and TensorBoard run of a checkpoint, to continue them.

        They are re-rooted: the saved names are placed under this run's ``log_path`` and
        ``run_path``. The loggers open in :py:meth:`open`.

        Args:
            state_dict: ``{"log_path": ..., "run_path": ..., "tensorboard_events": ...}``
                (entries may be ``None``).
        """
        log_file = state_dict.get("log_path")
        run_dir = state_dict.get("run_path")
        if self._log_root is not None and log_file is not None:
            self._saved_log = self._log_root / pathlib.PurePath(log_file).name
        if self._runs_root is not None and run_dir is not None:
            self._saved_run = self._runs_root / pathlib.PurePath(run_dir).name
            self._saved_events = state_dict.get("tensorboard_events")

    def open(self, purge: bool = False) -> None:
        """Open the checkpoint's log file and TensorBoard run, or new ones.

        Args:
            purge: drop from the continued TensorBoard run what was logged after the
                checkpoint (a resume that trains again from it).
        """
        if self._opened:
            return
        saved_run, saved_events = self._saved_run, self._saved_events
        if purge and saved_run is not None and saved_events is not None and _is_rank0():
            purge_events_after(saved_run, saved_events)
        if self._saved_log is not None or self._saved_run is not None:
            logging.restore_default_loggers(log_path=self._saved_log, run_path=self._saved_run)
        new_log = self._log_root if self._saved_log is None else None
        new_run = self._runs_root if self._saved_run is None else None
        if new_log is not None or new_run is not None:
            logging.setup_default_loggers(self._run_name, log_root=new_log, runs_root=new_run)
        self._opened = True

    def open_new(self) -> None:
        """Open the loggers without purging anything (see :py:meth:`open`)."""
        self.open(purge=False)


def _is_rank0() -> bool:
    return dist.get_global_rank() == 0


def event_file_sizes(run_dir: pathlib.Path) -> dict[str, int]:
    """Return the size of every TensorBoard event file under a run folder.

    Args:
        run_dir: the run folder.

    Returns:
        The sizes in bytes, by path relative to ``run_dir`` (``/``-separated).
    """
    if not run_dir.is_dir():
        return {}
    return {
        path.relative_to(run_dir).as_posix(): path.stat().st_size
        for path in run_dir.rglob(EVENT_FILE_PATTERN)
        if path.is_file()
    }


def purge_events_after(run_dir: pathlib.Path, sizes: dict[str, int]) -> None:
    """Remove from a run folder the TensorBoard events written after a checkpoint.

    Event files are sequences of whole records that only grow, so cutting a file back to
    the size it had when the checkpoint was written drops exactly what came later. Event
    files the checkpoint does not list were created after it and are deleted, with the
    folders that this leaves empty.

    Args:
        run_dir: the run folder.
        sizes: the sizes recorded by :py:func:`event_file_sizes` with the checkpoint.
    """
    if not run_dir.is_dir():
        return
    emptied: set[pathlib.Path] = set()
    for name, size in event_file_sizes(run_dir).items():
        path = run_dir / name
        saved = sizes.get(name)
        if saved is None:
            path.unlink()
            emptied.update(p for p in path.parents if p.is_relative_to(run_dir) and p != run_dir)
        elif size > saved:
            os.truncate(path, saved)
    for folder in sorted(emptied, key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            folder.rmdir()  # only if nothing else is left in it
