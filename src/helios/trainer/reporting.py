"""What a training run reports: console lines, the bar's running losses, and logger metrics.

The running losses are the model's own sums (``Model.running_losses``, kept on the device
of the losses: one term per batch) divided by the number of batches summed since the last
validation (``state.running_iter`` iterations of ``accumulation_steps`` batches, plus the
batches of an iteration under way); they are read, which synchronises with the device,
only when something shows or logs them: at most once per
:py:data:`BAR_REFRESH_SECONDS` for the progress bar, on the batches whose ``should_log`` is
set (``print_frequency``), and at each validation. Every metric goes to every experiment
logger (:py:mod:`helios.loggers`) at the step ``state.current_iteration``:

* ``train/<loss item>``: the running mean of each loss item,
* ``valid/<name>``: each number in the model's ``metrics`` table after a validation,
* ``lr/<optimizer>[/<group>]``: the learning rate of each optimizer found on the model,
* ``epoch_time``: the seconds of each epoch. In the ITERATION unit an epoch can end after
  the checkpoint of its last iteration; its time then goes out with the next iteration (or
  at the end of training), so that no point is logged after a checkpoint at that
  checkpoint's step, which a resumed run would log a second time.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from helios.core import distributed as dist
from helios.core import logging

from .console import format_bar_postfix, format_validation_summary

if TYPE_CHECKING:
    from helios.loggers import ExperimentLogger
    from helios.model import Model

    from .logger_runs import LoggerStates
    from .state import TrainingState

BAR_REFRESH_SECONDS = 1.0
"""Least time between two reads of the running losses for the progress bar."""


def find_optimizers(model: object) -> dict[str, torch.optim.Optimizer]:
    """Return the optimizers found on a model (as its default state finds them), by key."""
    from helios.model import default_state

    found, _ = default_state.find_state(model)
    return {
        key.lstrip("_"): value
        for key, value in found.items()
        if isinstance(value, torch.optim.Optimizer)
    }


def run_summary(model: object, device: torch.device, precision: str, world_size: int) -> str:
    """Describe a run in one line: its device, precision, world size and networks.

    Args:
        model: the model, whose networks (as its default state finds them) are counted.
        device: the device of this process.
        precision: the run's precision.
        world_size: the number of processes.

    Returns:
        ``"Run on cpu, precision 32, 1 process(es); networks: net 1,234 parameters (1,234
        trainable)"``.
    """
    from helios.model import default_state

    found, _ = default_state.find_state(model)
    networks = []
    for key, value in found.items():
        if isinstance(value, torch.nn.Module):
            total = sum(p.numel() for p in value.parameters())
            trainable = sum(p.numel() for p in value.parameters() if p.requires_grad)
            networks.append(f"{key} {total:,} parameters ({trainable:,} trainable)")
    listed = "; ".join(networks) if networks else "none found on the model"
    return f"Run on {device}, precision {precision}, {world_size} process(es); networks: {listed}"


class RunReport:
    """Reports one training run to the console (rank 0) and to the experiment loggers.

    Args:
        model: the model, whose running losses and ``metrics`` are reported.
        loggers: the experiment loggers this process writes to (rank 0's; none elsewhere).
        show: whether this process prints the console lines.
        defer_epoch_times: log epoch times with the next iteration (ITERATION unit).
        accumulation_steps: batches per iteration (1 in the EPOCH unit, where every batch
            counts as an iteration).
        logger_states: the loggers' part: told when the loggers first logged and when one
            fails (``None``: a failing logger is only warned about and left out).
    """

    def __init__(
        self,
        model: Model,
        loggers: Sequence[ExperimentLogger],
        show: bool,
        defer_epoch_times: bool = False,
        accumulation_steps: int = 1,
        logger_states: LoggerStates | None = None,
    ) -> None:
        self._model = model
        self._logger_states = logger_states
        self._accumulation = accumulation_steps
        self._loggers = list(loggers)
        self._show = show
        self._defer_epoch_times = defer_epoch_times
        self._pending: dict[str, float] = {}
        self._losses_logged_at: int | None = None
        self._last_bar_refresh = 0.0
        self._optimizers = find_optimizers(model)

    def batches_summed(self, state: TrainingState) -> int:
        """The number of batches in the running sums (since the last validation)."""
        partial = state.global_iteration % self._accumulation  # an iteration under way
        return state.running_iter * self._accumulation + partial

    def loss_means(self, state: TrainingState) -> dict[str, float]:
        """Read the running mean of every loss item (per batch) since the last validation."""
        batches = self.batches_summed(state)
        if not batches:
            return {}
        sums = self._model.running_losses
        return {key: float(value) / batches for key, value in sums.items()}

    def refresh_bar(self, bar: Any, state: TrainingState, now: float) -> None:
        """Show the running losses on a progress bar, at most once a second."""
        if bar is None or now - self._last_bar_refresh < BAR_REFRESH_SECONDS:
            return
        self._last_bar_refresh = now
        bar.set_postfix(format_bar_postfix(self.loss_means(state)), refresh=False)

    def log_losses(self, state: TrainingState) -> None:
        """Send the running losses and learning rates to the loggers (``should_log``)."""
        if self._loggers:
            self._log(self._train_metrics(self.loss_means(state)), state)
            self._losses_logged_at = state.current_iteration

    def validated(
        self,
        state: TrainingState,
        loss_means: Mapping[str, float],
        batches: int | None = None,
        ran: bool = True,
    ) -> None:
        """Print the line of a validation that just ended and log its metrics.

        Args:
            state: the training state (the validation is not yet counted in it).
            loss_means: the running losses read before the validation began.
            batches: the number of batches the means are over.
            ran: whether a validation cycle ran (not without validation data).
        """
        metrics = self._model.metrics
        line = format_validation_summary(
            metrics,
            {f"train {name}": value for name, value in loss_means.items()},
            cycle=state.validation_cycles if ran else None,
            epoch=state.global_epoch,
            iteration=state.current_iteration,
            batches=batches,
            validated=ran,
        )
        logging.get_root_logger().info(line)
        if self._show:
            dist.global_print(line)
        if self._loggers:
            numbers_only = {
                f"valid/{name}": value for name, value in metrics.items() if _is_number(value)
            }
            if self._losses_logged_at != state.current_iteration:  # not twice at one step
                numbers_only.update(self._train_metrics(loss_means))
            self._log(numbers_only, state)

    def epoch_ended(self, state: TrainingState, seconds: float) -> None:
        """Log how long an epoch took (deferred to the next iteration in that unit)."""
        if not self._loggers:
            return
        if self._defer_epoch_times:
            self._pending["epoch_time"] = seconds
        else:
            self._log({"epoch_time": seconds}, state)

    def unit_ending(self, state: TrainingState) -> None:
        """Log what was deferred, before the end of a unit saves a checkpoint."""
        if self._pending:
            pending, self._pending = self._pending, {}
            self._log(pending, state)

    def say(self, line: str) -> None:
        """Print one line about the run (rank 0) and log it."""
        logging.get_root_logger().info(line)
        if self._show:
            dist.global_print(line)

    def _train_metrics(self, loss_means: Mapping[str, float]) -> dict[str, float]:
        metrics = {f"train/{name}": value for name, value in loss_means.items()}
        for name, optimizer in self._optimizers.items():
            groups = optimizer.param_groups
            for index, group in enumerate(groups):
                key = f"lr/{name}" if len(groups) == 1 else f"lr/{name}/{index}"
                metrics[key] = float(group["lr"])
        return metrics

    def _log(self, metrics: Mapping[str, float], state: TrainingState) -> None:
        """Send metrics to every logger; one that raises is warned about and left out."""
        if not metrics:
            return
        for logger in list(self._loggers):
            try:
                logger.log_metrics(metrics, step=state.current_iteration)
            except Exception as error:
                self._loggers.remove(logger)
                if self._logger_states is not None:
                    self._logger_states.failed(logger, error)
                else:
                    message = f"the {type(logger).__name__} failed ({error}); left out"
                    logging.get_root_logger().warning(message)
        if self._logger_states is not None:
            self._logger_states.logged()


def _is_number(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.numel() == 1
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


__all__ = [
    "BAR_REFRESH_SECONDS",
    "RunReport",
    "find_optimizers",
    "run_summary",
]
