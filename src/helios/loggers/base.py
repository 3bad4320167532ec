"""The interface every experiment logger implements.

An experiment logger records scalar metrics by step (and a run's parameters) in a tracker:
a CSV file, an MLflow tracking store, a Weights & Biases run. Its state is a checkpoint part,
so that a resumed training run continues the *same* logged run:

1. A new logger starts a new logged run the first time it logs something.
2. ``state_dict()`` (called when a checkpoint is saved) flushes what was logged and returns
   the run's identity and the last step written.
3. After a restart, a new logger instance is given that state with ``load_state_dict()``;
   ``resume_from(step)`` (``step`` being the step of the checkpoint) then reopens the saved
   run and drops every point logged at a step greater than ``step``, so the points logged
   again by the resumed training are neither duplicated nor missing. Without an explicit
   ``resume_from``, the first write resumes from the step saved in the state.

Only global rank 0 logs; on other ranks every method does nothing (and ``state_dict``
returns the state it was given, if any).

Logging never fails training: bad arguments raise, and so does opening the run (a missing
extra, an unreachable tracking server), but a backend's failure to write (a full disk, a
lost connection) is reported once on stderr and ignored. The trainer checks each logger's
destination before anything trains (:py:meth:`ExperimentLogger.check_destination`), and a
logger that fails while a run trains (its run cannot be opened, say) is reported in one
warning and left out of the rest of the run.
"""

from __future__ import annotations

import abc
import contextlib
import numbers
import operator
import os
import pathlib
import sys
import tempfile
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from helios.core import distributed as dist

STATE_VERSION = 1
"""Version of the state dictionaries written by :py:meth:`ExperimentLogger.state_dict`."""


class LoggerDestinationError(ValueError):
    """An experiment logger's destination cannot be written (checked before training)."""


def _to_float(name: str, value: Any) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(
                f"metric {name!r} must be a scalar, got a tensor of shape {tuple(value.shape)}"
            )
        return float(value.detach().item())
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"metric {name!r} must be a real number or a one-element tensor, got "
            f"{type(value).__name__} ({value!r})"
        )
    return float(value)


def _to_step(step: Any) -> int:
    if isinstance(step, bool):
        raise TypeError(f"step must be a non-negative integer, got {step!r}")
    try:
        value = operator.index(step)
    except TypeError:
        raise TypeError(
            f"step must be a non-negative integer, got {type(step).__name__} ({step!r})"
        ) from None
    if value < 0:
        raise ValueError(f"step must be a non-negative integer, got {value}")
    return value


class ExperimentLogger(abc.ABC):
    """Base class of the experiment loggers (CSV, MLflow, Weights & Biases).

    Subclasses implement the ``_open``, ``_write_metrics``, ``_write_params``, ``_flush``,
    ``_close`` and ``_extra_state`` hooks; this class validates the arguments, restricts
    logging to global rank 0 and keeps the resume state.

    The state (see :py:meth:`state_dict`) is a plain dictionary::

        {"version": 1, "backend": "csv" | "mlflow" | "wandb",
         "run_id": str | None,      # the logged run (None: nothing logged yet)
         "last_step": int | None,   # the greatest step written so far
         ...}                       # backend entries (CSV: "path"; MLflow: "tracking_uri",
                                    # "experiment_id"; W&B: "project", "dir")
    """

    backend: str = ""
    """Short name of the backend, stored in the state (``"csv"``, ``"mlflow"``, ...)."""

    def __init__(self) -> None:
        self._run_id: str | None = None
        self._last_step: int | None = None
        self._loaded: dict[str, Any] | None = None
        self._resume_step: int | None = None
        self._opened = False
        self._closed = False
        self._write_failed = False

    # -- public interface --------------------------------------------------------------------

    @property
    def run_id(self) -> str | None:
        """The id of the logged run (``None`` until the run is opened)."""
        return self._run_id

    @property
    def last_step(self) -> int | None:
        """The greatest step written so far (``None`` if nothing was written)."""
        return self._last_step

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        """Record scalar metrics at a step.

        Args:
            metrics: the values by name: real numbers or one-element tensors.
            step: the step (a non-negative integer, usually the global iteration).

        Raises:
            TypeError: if ``metrics`` is not a mapping of names to numbers, or ``step`` is
                not an integer.
            ValueError: if ``step`` is negative or a tensor has more than one element.
            RuntimeError: if the logger was closed.
        """
        if not isinstance(metrics, Mapping):
            raise TypeError(
                f"metrics must be a mapping of names to numbers, got {type(metrics).__name__}"
            )
        step = _to_step(step)
        values: dict[str, float] = {}
        for name, value in metrics.items():
            if not isinstance(name, str) or not name:
                raise TypeError(f"metric names must be non-empty strings, got {name!r}")
            values[name] = _to_float(name, value)
        self._check_metrics(values)
        if not self._is_active() or not values:
            return
        self._ensure_open()
        with self._writing():
            self._write_metrics(values, step)
        self._last_step = step if self._last_step is None else max(self._last_step, step)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Record the parameters of the run (hyper-parameters, arguments).

        Values are stored as given where the backend allows it, else as strings.

        Args:
            params: the parameters by name.

        Raises:
            TypeError: if ``params`` is not a mapping with string keys.
            RuntimeError: if the logger was closed.
        """
        if not isinstance(params, Mapping) or not all(isinstance(k, str) for k in params):
            raise TypeError(
                f"params must be a mapping with string keys, got {type(params).__name__}"
            )
        if not self._is_active() or not params:
            return
        self._ensure_open()
        with self._writing():
            self._write_params(dict(params))

    def resume_from(self, step: int) -> None:
        """Reopen the run saved by :py:meth:`load_state_dict`, dropping points after ``step``.

        Every point logged at a step greater than ``step`` is removed (see each backend for
        how), so that logging again from ``step + 1`` leaves no duplicated or missing steps.
        Without a loaded state (or one saved before anything was logged) a new run is
        started. Call it before logging anything.

        Args:
            step: the step of the checkpoint training resumes from.

        Raises:
            RuntimeError: if the logger already opened its run or was closed.
            ValueError: if ``step`` is negative.
        """
        step = _to_step(step)
        if self._opened or self._closed:
            raise RuntimeError("resume_from() must be called before the logger logs anything")
        self._resume_step = step
        if self._is_active():
            self._ensure_open()

    def check_destination(self) -> None:
        """Check that the logger can write where it will write, before anything is logged.

        ``fit`` calls this on global rank 0 before training (after a resumed run's state was
        loaded, so a resumed logger checks where its run is). The local folder the backend
        writes into (``destination_folder``) is created if needed and a probe file is
        written and removed in it; a backend with no local folder (a tracking server) is
        not checked here.

        Raises:
            LoggerDestinationError: naming the logger, the path and the cause.
        """
        folder = self.destination_folder()
        if folder is None or not self._is_active():
            return
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if not folder.is_dir():
                raise NotADirectoryError(f"{folder} is not a folder")
            fd, name = tempfile.mkstemp(prefix=".helios-logger-probe.", dir=folder)
            os.close(fd)
            os.unlink(name)
        except OSError as error:
            raise LoggerDestinationError(
                f"the {type(self).__name__} cannot write into {folder} "
                f"({type(error).__name__}: {error}); give it a path in a folder that can be "
                "written"
            ) from error
        self._check_target()

    def destination_folder(self) -> pathlib.Path | None:
        """The local folder the logger writes into (``None``: none, or not known here)."""
        return None

    def flush(self) -> None:
        """Write what is buffered to the backend."""
        if self._opened and not self._closed:
            with self._writing():
                self._flush()

    def close(self) -> None:
        """Flush and end the logged run (it can be resumed later from a saved state)."""
        if self._opened and not self._closed:
            with self._writing():
                self._flush()
            with self._writing():
                self._close()
        self._closed = True

    def state_dict(self) -> dict[str, Any]:
        """Flush and return what a resumed run needs to continue this logged run.

        Returns:
            ``{"version", "backend", "run_id", "last_step", ...}`` (see the class
            docstring); on ranks other than 0, the state given to :py:meth:`load_state_dict`
            (or an empty run's state).
        """
        if not self._is_active() and self._loaded is not None:
            return dict(self._loaded)
        self.flush()
        state: dict[str, Any] = {
            "version": STATE_VERSION,
            "backend": self.backend,
            "run_id": self._run_id,
            "last_step": self._last_step,
        }
        state.update(self._extra_state())
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the state saved by :py:meth:`state_dict` (before logging anything).

        Args:
            state: the saved state.

        Raises:
            TypeError: if ``state`` is not a mapping.
            ValueError: if ``state`` was written by another backend or version, or lacks an
                entry.
            RuntimeError: if the logger already opened its run.
        """
        if not isinstance(state, Mapping):
            raise TypeError(f"state must be a mapping, got {type(state).__name__}")
        if self._opened or self._closed:
            raise RuntimeError("load_state_dict() must be called before the logger logs anything")
        missing = [k for k in ("version", "backend", "run_id", "last_step") if k not in state]
        if missing:
            raise ValueError(f"the logger state lacks the entries {missing}")
        if state["backend"] != self.backend:
            raise ValueError(
                f"cannot load the state of a {state['backend']!r} logger into a "
                f"{self.backend!r} logger ({type(self).__name__})"
            )
        if state["version"] != STATE_VERSION:
            raise ValueError(
                f"logger state version {state['version']!r} is not supported "
                f"(expected {STATE_VERSION})"
            )
        self._loaded = dict(state)
        self._run_id = state["run_id"]
        self._last_step = state["last_step"]

    # -- helpers for subclasses --------------------------------------------------------------

    @property
    def saved_state(self) -> dict[str, Any] | None:
        """The state given to :py:meth:`load_state_dict`, if any."""
        return self._loaded

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Report the first failure of the backend to write on stderr, and ignore them all."""
        try:
            yield
        except Exception as error:
            if self._write_failed:
                return
            self._write_failed = True
            try:
                sys.stderr.write(
                    f"helios warning: the {self.backend} logger ({type(self).__name__}) failed "
                    f"to write ({type(error).__name__}: {error}); training goes on, and further "
                    "failures of this logger are not shown\n"
                )
                sys.stderr.flush()
            except Exception:
                pass

    def _is_active(self) -> bool:
        return dist.get_global_rank() == 0

    def _ensure_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"the {type(self).__name__} was closed")
        if self._opened:
            return
        resume = self._loaded is not None and self._loaded.get("run_id") is not None
        step = self._resume_step if self._resume_step is not None else self._last_step
        if resume and step is None:
            # The saved run exists but nothing was logged before the checkpoint.
            step = -1
        self._open(step if resume else None)
        self._opened = True
        if resume:
            assert step is not None
            if step < 0:
                self._last_step = None
            elif self._last_step is not None:
                self._last_step = min(self._last_step, step)

    # -- backend hooks -----------------------------------------------------------------------

    @abc.abstractmethod
    def _open(self, resume_step: int | None) -> None:
        """Open the run: a new one (``resume_step`` is None) or the saved one, truncated.

        When resuming, every point with a step greater than ``resume_step`` (which may be -1:
        drop everything) must be dropped. Must set ``self._run_id``.
        """

    def _check_target(self) -> None:  # noqa: B027 - optional hook
        """Raise :py:class:`LoggerDestinationError` for a target the backend cannot use."""

    def _check_metrics(self, metrics: dict[str, float]) -> None:  # noqa: B027 - optional hook
        """Raise for metrics the backend cannot take (before anything is written)."""

    @abc.abstractmethod
    def _write_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Write validated metrics."""

    @abc.abstractmethod
    def _write_params(self, params: dict[str, Any]) -> None:
        """Write parameters."""

    @abc.abstractmethod
    def _flush(self) -> None:
        """Write buffered data."""

    @abc.abstractmethod
    def _close(self) -> None:
        """End the run (after a flush)."""

    def _extra_state(self) -> dict[str, Any]:
        """Backend entries of the state."""
        return {}
