"""The run's monitored metric: named once, used by early stopping and keep-best retention.

``Trainer(monitor="accuracy", monitor_mode="max", monitor_min_delta=0.001)`` names one key
of the model's ``metrics`` table, the direction that is better and the least change that
counts as an improvement. After every validation cycle the run's :py:class:`Monitor` judges
the new value against the best so far; then:

* the default :py:meth:`helios.model.Model.have_metrics_improved` answers with that verdict,
  so ``early_stop_cycles`` stops the run after that many validations without improvement
  (a model that overrides ``have_metrics_improved``, as in Helios 1.2.7, still decides);
* checkpoints are ranked by the monitored metric when ``chkpt_best_metric`` is not given
  (the index ``checkpoints.json`` names the best one, and a run that deletes old
  checkpoints keeps its best: see :py:mod:`helios.trainer.checkpoint.keep_policy`).

The monitor's state (best value, the validation it came from, validations since then) is a
checkpoint part (``metric_monitor``), so a resumed run judges exactly as the uninterrupted
one. A metric that the first validation does not write into the table is an error at that
validation (a typo would otherwise disable early stopping and keep-best without a word);
one that goes missing later is a warning, and that validation is not judged.
"""

from __future__ import annotations

import dataclasses
import math
import re
import warnings
from collections.abc import Mapping
from typing import Any

from helios.core import logging

MONITOR_MODES = ("max", "min")
"""The directions a monitored metric may improve in."""

_LOWER_IS_BETTER = re.compile(r"loss|error|err\b|mse|mae|perplexity", re.IGNORECASE)


def default_mode(name: str) -> str:
    """The mode of a metric when ``monitor_mode`` is not given.

    ``"min"`` for names that say lower is better (containing ``loss``, ``error``, ``err``,
    ``mse``, ``mae`` or ``perplexity``, in any case), ``"max"`` otherwise.

    Args:
        name: the monitored metric.

    Returns:
        ``"min"`` or ``"max"``.
    """
    return "min" if _LOWER_IS_BETTER.search(name) else "max"


class MonitoredMetricError(ValueError):
    """The monitored metric is not in the model's ``metrics`` table after a validation."""


@dataclasses.dataclass(frozen=True)
class MonitorSpec:
    """The Trainer's ``monitor``, ``monitor_mode`` and ``monitor_min_delta``, checked.

    Attributes:
        name: the monitored key of the model's ``metrics`` table.
        mode: ``"max"`` or ``"min"``.
        min_delta: the least improvement.
    """

    name: str
    mode: str
    min_delta: float

    def create(self) -> Monitor:
        """Return a fresh monitor (no best value yet) for a run."""
        return Monitor(self.name, self.mode, self.min_delta)


class Monitor:
    """The monitored metric of a run and its best value so far (checkpoint part state).

    Args:
        name: the key of the model's ``metrics`` table.
        mode: ``"max"`` (higher is better) or ``"min"``.
        min_delta: the least change over the best value that counts as an improvement.

    Attributes:
        name: the monitored key.
        mode: ``"max"`` or ``"min"``.
        min_delta: the least improvement.
        best: the best value so far (``None`` before the first judged validation).
        best_cycle: the validation cycle (counted from 1) of the best value.
        improved: the verdict on the last validation: ``True``, ``False``, or ``None``
            when it was not judged (no validation yet, or the metric was missing).
        stale_cycles: judged validations since the last improvement.
    """

    def __init__(self, name: str, mode: str = "max", min_delta: float = 0.0) -> None:
        self.name = name
        self.mode = mode
        self.min_delta = float(min_delta)
        self.best: float | None = None
        self.best_cycle: int | None = None
        self.improved: bool | None = None
        self.stale_cycles = 0
        self._warned_missing = False

    def __repr__(self) -> str:
        return (
            f"Monitor({self.name!r}, mode={self.mode!r}, min_delta={self.min_delta}, "
            f"best={self.best}, improved={self.improved})"
        )

    def describe(self) -> str:
        """Say what is monitored, e.g. ``"'accuracy' (higher is better)"``."""
        direction = "higher" if self.mode == "max" else "lower"
        delta = f", by at least {self.min_delta:g}" if self.min_delta else ""
        return f"{self.name!r} ({direction} is better{delta})"

    def update(self, metrics: Mapping[str, Any], cycle: int) -> bool | None:
        """Judge the validation that just ended.

        Args:
            metrics: the model's ``metrics`` table after the validation.
            cycle: the number of the validation (counted from 1).

        Returns:
            The verdict (:py:attr:`improved`).

        Raises:
            MonitoredMetricError: if the metric is missing after the run's first
                validation, naming the keys the table holds.
        """
        if self.name not in metrics:
            self.improved = None
            self._missing(metrics, cycle)
            return None
        value = _number(metrics[self.name])
        if value is None or not math.isfinite(value):
            self.improved = False  # NaN, inf or not a number: never an improvement
        else:
            self.improved = self.best is None or (
                value > self.best + self.min_delta
                if self.mode == "max"
                else value < self.best - self.min_delta
            )
        if self.improved:
            self.best, self.best_cycle, self.stale_cycles = value, cycle, 0
        else:
            self.stale_cycles += 1
        return self.improved

    def _missing(self, metrics: Mapping[str, Any], cycle: int) -> None:
        keys = ", ".join(repr(key) for key in sorted(map(str, metrics))) or "none"
        fix = (
            f"write it in on_validation_end (self.metrics[{self.name!r}] = ...) or pass "
            "monitor= one of the keys there are"
        )
        if self.best is None and self.best_cycle is None and not self.stale_cycles:
            raise MonitoredMetricError(
                f"monitor={self.name!r} is not in the model's metrics table after "
                f"validation {cycle} (keys: {keys}): early stopping and keep-best would "
                f"never see it. {fix.capitalize()}"
            )
        if not self._warned_missing:
            self._warned_missing = True
            message = (
                f"monitor={self.name!r} is missing from the model's metrics table after "
                f"validation {cycle} (keys: {keys}); validations without it are not judged"
            )
            if logging.is_root_logger_active():
                logging.get_root_logger().warning(message)
            warnings.warn(message, RuntimeWarning, stacklevel=3)

    def summary(self) -> str:
        """The best value so far, e.g. ``"best 'accuracy' 0.95 at validation 3"``."""
        if self.best is None:
            return f"no value of {self.name!r} yet"
        return f"best {self.name!r} {self.best:.6g} at validation {self.best_cycle}"

    def state_dict(self) -> dict[str, Any]:
        """Return the monitored metric and its best value so far."""
        return {
            "name": self.name,
            "mode": self.mode,
            "min_delta": self.min_delta,
            "best": self.best,
            "best_cycle": self.best_cycle,
            "improved": self.improved,
            "stale_cycles": self.stale_cycles,
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore the best value of a resumed run.

        A checkpoint that monitored another metric or direction starts the judging afresh
        (and says so in the log).

        Args:
            state_dict: the value returned by :py:meth:`state_dict`.
        """
        if state_dict.get("name") != self.name or state_dict.get("mode") != self.mode:
            if logging.is_root_logger_active():
                logging.get_root_logger().info(
                    f"the checkpoint monitored {state_dict.get('name')!r} "
                    f"({state_dict.get('mode')}); this run monitors {self.describe()}: its best "
                    "value starts afresh"
                )
            return
        best = state_dict.get("best")
        self.best = None if best is None else float(best)
        cycle = state_dict.get("best_cycle")
        self.best_cycle = None if cycle is None else int(cycle)
        improved = state_dict.get("improved")
        self.improved = None if improved is None else bool(improved)
        self.stale_cycles = int(state_dict.get("stale_cycles", 0))


class MonitorPart:
    """The run's monitor as a checkpoint part's owner: no entry when nothing is monitored.

    Args:
        monitor: the run's monitor, or ``None``.
    """

    def __init__(self, monitor: Monitor | None) -> None:
        self.monitor = monitor

    def state_dict(self) -> dict[str, Any] | None:
        """Return the monitor's state (``None`` without a monitor)."""
        return None if self.monitor is None else self.monitor.state_dict()

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore the monitor's state (ignored when this run monitors nothing)."""
        if self.monitor is not None and isinstance(state_dict, Mapping):
            self.monitor.load_state_dict(state_dict)


def _number(value: Any) -> float | None:
    try:
        return float(value.item() if hasattr(value, "item") else value)
    except (TypeError, ValueError, RuntimeError):
        return None


__all__ = [
    "MONITOR_MODES",
    "Monitor",
    "MonitorPart",
    "MonitorSpec",
    "MonitoredMetricError",
    "default_mode",
]
