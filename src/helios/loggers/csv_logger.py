"""A logger that writes metrics to one CSV file per run (always available)."""

from __future__ import annotations

import csv
import io
import json
import os
import pathlib
import warnings
from collections.abc import Mapping
from typing import IO, Any

from .base import ExperimentLogger, LoggerDestinationError

STEP_COLUMN = "step"
"""Name of the first column of the file, which holds the step of each row."""


def write_atomically(path: pathlib.Path, text: str) -> None:
    """Replace ``path`` by ``text`` so that readers see either the old or the new file.

    Args:
        path: the file.
        text: its new contents.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)


def _format(value: float) -> str:
    return repr(value)


class CSVLogger(ExperimentLogger):
    """Writes each :py:meth:`log_metrics` call as one row of a CSV file.

    The first column is ``step``; the others are the metric names in the order they first
    appeared. A row leaves the metrics it does not have empty. When a metric name appears
    that the file has no column for, the file is rewritten (atomically) with the column
    added at the end, so every row always has the same columns as the header. Rows are
    written (and flushed to the operating system) as they are logged.

    A new run writes to ``path``; if that file already exists and is not empty, ``_1``,
    ``_2``, ... is appended to the name instead of mixing two runs in one file. On resume,
    the file saved in the state is used (wherever ``path`` points now); rows with a step
    greater than the resume step, and a last line cut short by a crash, are removed by
    rewriting the file atomically, and new rows are appended after the remaining ones.

    Parameters from :py:meth:`log_params` go to a JSON file next to the CSV file
    (``<name>.params.json``), merged with the ones written before.

    Args:
        path: the CSV file of a new run; its folder is created if needed.

    Raises:
        TypeError: if ``path`` is not a string or a path.
    """

    backend = "csv"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__()
        if not isinstance(path, str | os.PathLike):
            raise TypeError(f"CSVLogger path must be a string or a path, got {type(path).__name__}")
        self._path = pathlib.Path(path)
        self._columns: list[str] = []
        self._file: IO[str] | None = None
        self._writer: Any = None

    @property
    def path(self) -> pathlib.Path:
        """The CSV file written (the resumed run's file after a resume)."""
        return self._path

    @property
    def params_path(self) -> pathlib.Path:
        """The JSON file of the parameters."""
        return self._path.with_name(self._path.stem + ".params.json")

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a saved state; a file outside this logger's folder is not continued.

        The state comes from a checkpoint (a file): its ``path`` is continued (rewritten
        and appended to) only when it is a file in the folder of this logger's ``path`` (or
        below it) and not a link; otherwise a warning says so and a new file is started.

        Args:
            state: the saved state.
        """
        super().load_state_dict(state)
        saved = state.get("path")
        if state.get("run_id") is None or self._in_own_folder(saved):
            return
        warnings.warn(
            f"the saved CSVLogger state names the file {saved!r}, outside this logger's folder "
            f"{self._path.parent} (or a link): it is not continued; a new file is started",
            RuntimeWarning,
            stacklevel=2,
        )
        self._loaded = None
        self._run_id = self._last_step = None

    def _in_own_folder(self, saved: object) -> bool:
        if not isinstance(saved, str) or not saved:
            return False
        path = pathlib.Path(saved)
        if path.is_symlink():
            return False
        folder = self._path.parent.resolve()
        return folder in path.resolve().parents

    def destination_folder(self) -> pathlib.Path:
        """The folder of the CSV file (the resumed run's file after a resume)."""
        return self._target().parent

    def _target(self) -> pathlib.Path:
        saved = self.saved_state
        if saved is not None and saved.get("run_id") is not None and "path" in saved:
            return pathlib.Path(saved["path"])
        return self._path

    def _check_target(self) -> None:
        target = self._target()
        if target.exists() and not target.is_file():
            raise LoggerDestinationError(
                f"the CSVLogger writes the regular file {target}, but it is not one"
            )

    # -- hooks -------------------------------------------------------------------------------

    def _open(self, resume_step: int | None) -> None:
        saved = self.saved_state
        target = pathlib.Path(saved["path"]) if resume_step is not None and saved else self._path
        if target.exists() and not target.is_file():
            raise ValueError(
                f"CSVLogger writes a regular file (rewritten on resume), but {target} is not one"
            )
        if resume_step is not None and saved is not None:
            self._path = pathlib.Path(saved["path"])
            if self._path.exists():
                self._truncate(resume_step)
            else:
                warnings.warn(
                    f"the metrics file {self._path} of the resumed run does not exist; "
                    "starting it again from the resume step",
                    RuntimeWarning,
                    stacklevel=3,
                )
        else:
            self._path = self._unique_path(self._path)
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._run_id = self._path.stem
        self._reopen()

    def _check_metrics(self, metrics: dict[str, float]) -> None:
        if STEP_COLUMN in metrics:
            raise ValueError(
                f"{STEP_COLUMN!r} is the step column of the CSV file and cannot be a metric name"
            )

    def _write_metrics(self, metrics: dict[str, float], step: int) -> None:
        new = [name for name in metrics if name not in self._columns]
        if new:
            self._add_columns(new)
        assert self._writer is not None and self._file is not None
        row = [str(step)]
        row.extend(_format(metrics[c]) if c in metrics else "" for c in self._columns)
        self._writer.writerow(row)
        self._file.flush()

    def _write_params(self, params: dict[str, Any]) -> None:
        path = self.params_path
        merged: dict[str, Any] = {}
        if path.exists():
            merged = json.loads(path.read_text(encoding="utf-8"))
        merged.update(params)
        write_atomically(path, json.dumps(merged, indent=2, sort_keys=True, default=str) + "\n")

    def _flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            self._writer = None

    def _extra_state(self) -> dict[str, Any]:
        return {"path": str(self._path)}

    # -- file handling -----------------------------------------------------------------------

    @staticmethod
    def _unique_path(path: pathlib.Path) -> pathlib.Path:
        candidate = path
        index = 0
        while candidate.exists() and candidate.stat().st_size > 0:
            index += 1
            candidate = path.with_name(f"{path.stem}_{index}{path.suffix}")
        return candidate

    def _read(self) -> tuple[list[str], list[list[str]]]:
        """Return the header and the complete rows of the file."""
        if not self._path.exists():
            return [], []
        text = self._path.read_text(encoding="utf-8")
        if text and not text.endswith("\n"):
            # A line cut short by a crash: drop it.
            text = text[: text.rfind("\n") + 1]
        rows = list(csv.reader(io.StringIO(text, newline="")))
        if not rows:
            return [], []
        header, body = rows[0], rows[1:]
        if not header or header[0] != STEP_COLUMN:
            raise ValueError(
                f"{self._path} is not a metrics file written by CSVLogger (its first "
                f"column is {header[:1]}, expected [{STEP_COLUMN!r}])"
            )
        width = len(header)
        return header, [(row + [""] * width)[:width] for row in body if row]

    def _rewrite(self, header: list[str], rows: list[list[str]]) -> None:
        buffer = io.StringIO(newline="")
        writer = csv.writer(buffer, lineterminator="\n")
        if header:
            writer.writerow(header)
            writer.writerows(rows)
        write_atomically(self._path, buffer.getvalue())

    def _truncate(self, step: int) -> None:
        header, rows = self._read()
        kept = [row for row in rows if int(row[0]) <= step]
        self._rewrite(header, kept)
        self._columns = header[1:]

    def _add_columns(self, names: list[str]) -> None:
        self._close()
        try:
            header, rows = self._read()
            columns = [*self._columns, *names]
            padded = [row + [""] * (len(columns) + 1 - len(row)) for row in rows]
            self._rewrite([STEP_COLUMN, *columns], padded if header else [])
            self._columns = columns
        finally:
            self._reopen()

    def _reopen(self) -> None:
        self._file = open(self._path, "a", encoding="utf-8", newline="")  # noqa: SIM115
        self._writer = csv.writer(self._file, lineterminator="\n")


__all__ = ["CSVLogger", "write_atomically"]
