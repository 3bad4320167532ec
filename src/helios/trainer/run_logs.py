"""The log file and TensorBoard run of a training run, continued when the run resumes."""

from __future__ import annotations

import pathlib
from typing import Any

from helios.core import logging


class RunLogs:
    """Opens a run's log file and TensorBoard run: new ones, or those of its checkpoint.

    It is a flat checkpoint part: its state is the reference keys ``log_path`` and
    ``run_path`` of the checkpoint file.

    Args:
        run_name: the name of the run.
        log_root: the folder of log files, or ``None`` when file logging is off.
        runs_root: the folder of TensorBoard runs, or ``None`` when TensorBoard is off.
    """

    checkpoint_keys = ("log_path", "run_path")

    def __init__(
        self, run_name: str, log_root: pathlib.Path | None, runs_root: pathlib.Path | None
    ) -> None:
        self._run_name = run_name
        self._log_root = log_root
        self._runs_root = runs_root
        self._opened = False

    def state_dict(self) -> dict[str, Any]:
        """Return where the run logs, for the checkpoint."""
        writer = logging.get_tensorboard_writer() if self._runs_root is not None else None
        return {
            "log_path": logging.get_root_logger().log_file if self._log_root else None,
            "run_path": writer.run_path if writer is not None else None,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue the log file and TensorBoard run saved in a checkpoint.

        Args:
            state_dict: ``{"log_path": ..., "run_path": ...}`` (entries may be ``None``).
        """
        log_file = state_dict.get("log_path") if self._log_root is not None else None
        run_dir = state_dict.get("run_path") if self._runs_root is not None else None
        if log_file is not None or run_dir is not None:
            logging.restore_default_loggers(log_path=log_file, run_path=run_dir)
        self._open(new_log=log_file is None, new_run=run_dir is None)

    def open_new(self) -> None:
        """Start a new log file and TensorBoard run, unless a checkpoint's were continued."""
        if not self._opened:
            self._open(new_log=True, new_run=True)

    def _open(self, new_log: bool, new_run: bool) -> None:
        log_root = self._log_root if new_log else None
        runs_root = self._runs_root if new_run else None
        if log_root is not None or runs_root is not None:
            logging.setup_default_loggers(self._run_name, log_root=log_root, runs_root=runs_root)
        self._opened = True
