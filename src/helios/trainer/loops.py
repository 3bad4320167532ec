"""The training, validation and testing loops: one loop core for both training units.

Reading order for one training step: :py:meth:`TrainingLoop.run` (epochs) ->
:py:meth:`TrainingLoop._train_epoch` (the batch step) -> :py:meth:`TrainingLoop._end_unit`
(validation, checkpoint, stop decisions). The unit only changes *when* a unit ends: after
the last batch of an epoch (EPOCH) or after every ``accumulation_steps`` batches
(ITERATION). Saving goes through the ``save`` function the run passes in (see
:py:mod:`helios.trainer.checkpoint`); the run (:py:mod:`helios.trainer.run`) builds the loop
and calls :py:meth:`TrainingLoop.run` between the training hooks.

This docstring is the single statement of the order in which the Trainer calls hooks; the
tests in ``tests/helios/trainer/test_call_order.py`` pin it. ``P`` stands for every
registered plug-in (in registration order), ``M`` for the model. Plug-ins always go first.
A hook that neither the model nor a plug-in overrides, and whose default does nothing, is
not called at all.

fit::

    P.setup(); datamodule.setup(); M.setup(fast_init=False)
    load the newest readable checkpoint (M.load_state_dict, P.load_state_dict, state)
    if the run already ended (a stop, or total_steps reached): log it and return
    P.on_training_start(); M.on_training_start()
    M.train()
    run_epochs (EPOCH unit) or run_iterations (ITERATION unit)
    P.on_training_end(); M.on_training_end()

EPOCH unit, for each epoch e = 1, 2, ... total_steps::

    M.on_training_epoch_start(e)
    for each batch of the epoch:
        batch = P.process_training_batch(batch, state)   # first P with training_batch
        M.on_training_batch_start(state)
        M.train_step(batch, state)
        M.on_training_batch_end(state, should_log)
        if P.should_training_stop() or M.should_training_stop(): leave the batch loop
    if e % valid_frequency == 0:
        validate()                                       # see below
        M.have_metrics_improved()
        if P/M.should_training_stop(): stop after this epoch
    M.on_training_epoch_end(e)
    if e % chkpt_frequency == 0 and M.should_save_checkpoint(): save checkpoint
                                                     # after on_training_epoch_end
    if early_stop_count >= early_stop_cycles or P/M.should_training_stop(): stop

A stop (early stopping or ``should_training_stop``, not ``total_steps``) writes one more
checkpoint at the stop that records it (see :py:mod:`helios.trainer.run_end`), so running
the finished ``fit`` again trains nothing and calls neither ``on_training_start`` nor
``on_training_end``.

ITERATION unit (an iteration is ``accumulation_steps`` batches)::

    for each epoch e = 1, 2, ...:
        M.on_training_epoch_start(e)
        for each batch of the epoch:
            (same four calls as above; should_log only on the last batch of an iteration)
            if P/M.should_training_stop(): stop
            on the last batch of iteration i:
                if i % valid_frequency == 0:
                    validate(); M.have_metrics_improved()
                    if P/M.should_training_stop(): stop after the checkpoint below
                if i % chkpt_frequency == 0 and M.should_save_checkpoint(): save checkpoint
                if early_stop_count >= early_stop_cycles or i >= total_steps: stop
        M.on_training_epoch_end(e)                       # also for an epoch cut short

validate(cycle)::

    M.eval(); P.on_validation_start(cycle); M.on_validation_start(cycle)
    for each batch (under torch.no_grad()):
        batch = P.process_validation_batch(batch, step)  # first P with validation_batch
        M.on_validation_batch_start(step); M.valid_step(batch, step)
        M.on_validation_batch_end(step)
    M.train(); P.on_validation_end(cycle); M.on_validation_end(cycle)
    the loop clears the running losses (also without validation data: no hook runs then,
    and the console line says there was none; ``cycle`` counts from 0 in hooks and on the
    console alike)

test::

    P.setup(); datamodule.setup(); M.setup(fast_init=True)
    load the newest checkpoint (weights only) or else M.load_for_testing()
    P.on_testing_start(); M.on_testing_start(); M.eval()
    for each batch (under torch.no_grad()):
        batch = P.process_testing_batch(batch, step)
        M.on_testing_batch_start(step); M.test_step(batch, step); M.on_testing_batch_end(step)
    P.on_testing_end(); M.on_testing_end()

Checkpoint management (see :py:mod:`helios.trainer.checkpoint.retention`,
:py:mod:`helios.trainer.checkpoint.async_save`, :py:mod:`helios.trainer.nonfinite`): with the
non-finite guard on, each batch's losses are checked (CPU) or recorded (GPU) after
``M.on_training_batch_end``, and the records are read before each validation, before each
save and at the end of training; the model's state is checked inside the save, before
anything is written. Retention deletes old checkpoints only once the new one is durable;
an asynchronous save returns after the snapshot and the next save (or the end of ``fit``)
waits for it.

Resuming: the checkpoint of a run stopped anywhere holds the training state, the model, the
plug-ins, every RNG and the sampler position. A run resumed inside an epoch calls
``M.on_training_epoch_start(e)`` again for that epoch and continues with the same next batch
(the sampler skips by index). The RNGs are restored right before the first hook that ran
after the save in the uninterrupted run, so draws in ``on_training_start`` or
``on_training_epoch_start`` of the resumed run cannot shift the random stream. In the EPOCH
unit the checkpoint is written after ``on_training_epoch_end`` so that work done there (a
scheduler step, say) is part of it.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch

from helios.core import cuda as core_cuda
from helios.core import distributed as dist
from helios.core import logging
from helios.core.distributed import agree_any
from helios.data.samplers import place_sampler

from .preemption import Preempted, Preemption, ValidationInterruptedError
from .progress import make_bar
from .reporting import RunReport
from .run_end import EARLY_STOPPING, STOP_REQUESTED, TOTAL_STEPS, RunEnd
from .state import TrainingState, TrainingUnit

if TYPE_CHECKING:
    from helios.data import DataModule
    from helios.model import Model
    from helios.plugins import Plugin

    from .checkpoint.loader_state import LoaderState
    from .checkpoint.rank_state import RankState
    from .nonfinite import NonFiniteGuard


def overrides(obj: object, base: type, name: str) -> bool:
    """Return whether ``obj``'s class overrides the method ``name`` of ``base``.

    Args:
        obj: the instance.
        base: the base class that defines the default.
        name: the method name.

    Returns:
        True if the method differs from the base's.
    """
    return getattr(type(obj), name) is not getattr(base, name)


class Hooks:
    """The hooks of one run, resolved once so the per-batch path calls only what matters.

    Args:
        model: the model.
        plugins: the registered plug-ins, in order.
        collective_device: the device for agreeing on stop decisions across ranks, or
            ``None`` when not distributed.
    """

    def __init__(
        self, model: Model, plugins: list[Plugin], collective_device: torch.device | None
    ) -> None:
        from helios.model import Model
        from helios.plugins import Plugin

        self.model = model
        self.plugins = plugins
        self.collective_device = collective_device
        self.process_training_batch = self._batch_processor(
            "training_batch", "process_training_batch"
        )
        self.process_validation_batch = self._batch_processor(
            "validation_batch", "process_validation_batch"
        )
        self.process_testing_batch = self._batch_processor("testing_batch", "process_testing_batch")
        checks: list[Callable[[], bool]] = [
            p.should_training_stop for p in plugins if overrides(p, Plugin, "should_training_stop")
        ]
        if overrides(model, Model, "should_training_stop"):
            checks.append(model.should_training_stop)
        self._stop_checks = tuple(checks)
        # Agreed once: when no rank has a check, no rank pays a collective per batch.
        self.has_stop_checks = agree_any(bool(checks), collective_device)

        def optional(name: str) -> Callable[[int], None] | None:
            return getattr(model, name) if overrides(model, Model, name) else None

        self.on_validation_batch_start = optional("on_validation_batch_start")
        self.on_validation_batch_end = optional("on_validation_batch_end")
        self.on_testing_batch_start = optional("on_testing_batch_start")
        self.on_testing_batch_end = optional("on_testing_batch_end")
        overridden = overrides(model, Model, "should_save_checkpoint")
        self._should_save = model.should_save_checkpoint if overridden else None

    def _batch_processor(self, flag: str, method: str) -> Callable[..., Any] | None:
        for plugin in self.plugins:
            if getattr(plugin.unique_overrides, flag):
                return getattr(plugin, method)
        return None

    def call_plugins(self, name: str, *args: Any, **kwargs: Any) -> None:
        """Call a hook on every plug-in, in registration order."""
        for plugin in self.plugins:
            getattr(plugin, name)(*args, **kwargs)

    def save_wanted(self) -> bool:
        """Ask the model whether to save the checkpoint that is due (any rank can veto)."""
        if self._should_save is None:
            return True
        return not agree_any(not self._should_save(), self.collective_device)

    def stop_requested(self) -> bool:
        """Ask the plug-ins, then the model, whether to stop (agreed across ranks).

        Without any ``should_training_stop`` override on any rank this costs nothing. In one
        process the first "stop" ends the questioning. When distributed every check runs on
        every rank, because a check may itself be a collective (a broadcast).
        """
        if not self.has_stop_checks:
            return False
        if self.collective_device is None:
            return any(check() for check in self._stop_checks)
        answers = [check() for check in self._stop_checks]
        return agree_any(any(answers), self.collective_device)


def gradient_accumulators(model: object) -> list[Any]:
    """Return the gradient accumulators of the model's trainable parameters, to hold.

    Autograd gives every parameter one node that accumulates its gradient, alive as long as
    something references it. A training step written as a function (``train_step``) drops
    its graph when it returns, so without a holder autograd would build these nodes anew at
    every step; the training loop holds them (as ``DistributedDataParallel`` does) and every
    step reuses them. Networks found as the default model state finds them
    (:py:mod:`helios.model.default_state`); sharded networks are left alone.

    Args:
        model: the model.

    Returns:
        The accumulator nodes.
    """
    from helios.model import default_state, sharding

    found, _ = default_state.find_state(model)
    held = []
    with torch.enable_grad():
        for network in found.values():
            if isinstance(network, torch.nn.Module) and not sharding.is_sharded_network(network):
                for parameter in network.parameters():
                    node = parameter.view_as(parameter).grad_fn if parameter.requires_grad else None
                    if node is not None:
                        held.append(node.next_functions[0][0])
    return held


@dataclasses.dataclass(frozen=True)
class LoopOptions:
    """What the training loop needs to know of the Trainer's arguments.

    Attributes:
        train_unit: the unit of ``total_steps`` and the frequencies.
        total_steps: epochs or iterations to train for (``math.inf``: no limit).
        valid_frequency: validate every this many units (``None``: never).
        chkpt_frequency: save every this many units (``None``: never).
        print_frequency: set ``should_log`` every this many iterations (``None``: never).
        accumulation_steps: batches per iteration (ITERATION unit).
        early_stop_cycles: validations without improvement before stopping (``None``: off).
        show_progress: whether this process draws progress bars.
    """

    train_unit: TrainingUnit
    total_steps: int | float
    valid_frequency: int | None = None
    chkpt_frequency: int | None = None
    print_frequency: int | None = None
    accumulation_steps: int = 1
    early_stop_cycles: int | None = None
    show_progress: bool = False


def _due(index: int, frequency: int | None) -> bool:
    return frequency is not None and index % frequency == 0


class TrainingLoop:
    """Runs the training loop of one ``fit`` call, and the validation cycles within it.

    Args:
        options: the loop's settings.
        hooks: the resolved hooks of the run.
        datamodule: the data.
        save: writes a checkpoint of the run at a training state (returns its path).
        rank_state: this rank's RNG and sampler part; when it holds a loaded entry, that is
            applied at the resume point.
        preemption: the run's stop request by signal, polled at every batch boundary.
        report: what the run shows on the console and sends to the experiment loggers.
        run_end: records a stop (early stopping, ``should_training_stop``) for the
            checkpoint that the loop then writes at the stop.
        guard: checks losses and the model state for NaN/inf (see
            :py:mod:`helios.trainer.nonfinite`); ``None``: no checks.
        loader_state: this rank's position in a training stream; when it holds a loaded
            position, that is applied when the run resumes inside an epoch.
        after_validation: called with the training state after each validation cycle
            that ran (the retention record notes where the metrics were produced).

    Attributes:
        ended_by: why the loop ended (``run_end.EARLY_STOPPING``, ``STOP_REQUESTED`` or
            ``TOTAL_STEPS``), or ``None`` before it ends or when a signal stopped it.
    """

    def __init__(
        self,
        options: LoopOptions,
        hooks: Hooks,
        datamodule: DataModule,
        save: Callable[[TrainingState], Any],
        rank_state: RankState | None = None,
        preemption: Preemption | None = None,
        report: RunReport | None = None,
        run_end: RunEnd | None = None,
        guard: NonFiniteGuard | None = None,
        loader_state: LoaderState | None = None,
        after_validation: Callable[[TrainingState], None] | None = None,
    ) -> None:
        self.options = options
        self._after_validation = after_validation
        self.ended_by: str | None = None
        self._run_end = run_end
        self._report = report or RunReport(hooks.model, [], show=False)
        self.hooks = hooks
        self.model = hooks.model
        self._datamodule = datamodule
        self._save = save
        self._rank_state = rank_state
        self._loader_state = loader_state
        self._resume = rank_state if rank_state is not None and rank_state.is_pending else None
        self._preemption = preemption or Preemption()
        self._unit_end_pending = self._preemption.unit_end_pending
        self._preemption.unit_end_pending = False
        self._guard = guard
        self._epoch_unit = options.train_unit == TrainingUnit.EPOCH
        # The EPOCH unit counts every batch as an iteration.
        self._accumulation = 1 if self._epoch_unit else options.accumulation_steps
        self._validation = EvaluationLoop(hooks, options.show_progress, self._preemption.poll)
        self._bar: Any = None
        self._epoch_start_time = 0.0

    def _unit_index(self, state: TrainingState) -> int:
        return state.global_epoch if self._epoch_unit else state.current_iteration

    def run(self, state: TrainingState) -> None:
        """Train from ``state`` (a fresh one, or one restored from a checkpoint) to the end."""
        train = self._datamodule.train_dataloader()
        if train is None:
            raise RuntimeError(
                "the datamodule has no training split: train_dataloader() returned "
                "None. Set self._train_dataset in DataModule.setup()"
            )
        loader, sampler = train
        if self._rank_state is not None:
            self._rank_state.track_sampler(sampler)
        if self._loader_state is not None:
            self._loader_state.track(loader)
        self.model.train()
        accumulators = gradient_accumulators(self.model)  # noqa: F841 - held until the end
        total = self.options.total_steps
        self._bar = make_bar(
            self.options.show_progress, None if total == math.inf else total,
            "Training epochs" if self._epoch_unit else "Training iterations",
            "epoch" if self._epoch_unit else "it", initial=self._unit_index(state),
        )  # fmt: skip
        try:
            if self._end_interrupted_epoch(state):
                return
            # Inside an epoch (a mid-epoch checkpoint) the EPOCH unit still has it to end.
            while self._unit_index(state) < total or (self._epoch_unit and state.dataset_iter):
                self._start_epoch(state, sampler)
                if self._train_epoch(state, loader):
                    break
            if self._guard is not None:
                self._guard.check(state)
        except ValidationInterruptedError:
            self._stop_for_signal(state, unit_end_pending=True)
        finally:
            if self._bar is not None:
                self._bar.close()
        self._report.unit_ending(state)
        self._report.say(self._end_line(state))

    def _end_line(self, state: TrainingState) -> str:
        """Say in one line why and where training ended."""
        why = {
            EARLY_STOPPING: (
                f"stopped early: no improvement in {self.options.early_stop_cycles} validations"
            ),
            STOP_REQUESTED: "stopped by should_training_stop",
        }.get(self.ended_by or TOTAL_STEPS, "finished")
        return f"Training {why} at epoch {state.global_epoch}, iteration {state.current_iteration}"

    def _stop_for_signal(self, state: TrainingState, unit_end_pending: bool = False) -> None:
        """Save the run where a signal stopped it, then raise :py:class:`Preempted`."""
        preemption = self._preemption
        preemption.unit_end_pending = unit_end_pending
        path = self._save(state)
        dist.safe_barrier()
        assert preemption.signal_number is not None
        stopped = Preempted(preemption.signal_number, path)
        where = f"epoch {state.global_epoch}, iteration {state.current_iteration}"
        saved = f"checkpoint {path}" if path is not None else "no checkpoint (no chkpt_root)"
        message = (
            f"Training stopped by {stopped.signal_name} at {where}; {saved}. Exit code "
            f"{stopped.code}: run the same command again to resume."
        )
        logging.get_root_logger().info(message)
        dist.global_print(message)
        raise stopped

    def _train_epoch(self, state: TrainingState, loader: Any) -> bool:
        """Train the batches of one epoch; return whether training must stop."""
        hooks, model, guard = self.hooks, self.model, self._guard
        process, accumulation = hooks.process_training_batch, self._accumulation
        print_frequency = self.options.print_frequency
        units_end_in_epoch = not self._epoch_unit
        resumed_inside_epoch, batches_at_start = state.dataset_iter > 0, state.global_iteration
        bar, preemption, stop = self._epoch_bar(state, _safe_len(loader)), self._preemption, False
        solo = hooks.collective_device is None
        if self._unit_end_pending:  # a signal interrupted this unit's validation
            self._unit_end_pending = False
            stop = self._end_unit(state)
        timer_sum, timer_count, last = 0.0, 0, time.perf_counter()
        for batch in () if stop else loader:
            state.global_iteration += 1
            iteration_done = state.global_iteration % accumulation == 0
            if iteration_done:
                state.current_iteration += 1
                state.running_iter += 1
            if process is not None:
                batch = process(batch=batch, state=state)
            model.on_training_batch_start(state)
            model.train_step(batch, state)
            now = time.perf_counter()
            timer_sum, timer_count, last = timer_sum + now - last, timer_count + 1, now
            state.average_iter_time = timer_sum / timer_count
            should_log = (
                iteration_done
                and print_frequency is not None
                and state.current_iteration % print_frequency == 0
            )
            model.on_training_batch_end(state, should_log=should_log)
            if guard is not None:
                guard.after_step(state, should_log)
            state.dataset_iter += 1
            if should_log:
                self._report.log_losses(state)
            if bar is not None:
                bar.update()
                self._report.refresh_bar(bar, state, now)
            if hooks.has_stop_checks and hooks.stop_requested():
                stop = True
                if units_end_in_epoch:  # the EPOCH unit ends its epoch first
                    self._end_run(state, STOP_REQUESTED)
                break
            if units_end_in_epoch and iteration_done and self._end_unit(state):
                stop = True
                break
            # Mid-iteration, gradients accumulated so far would be lost: stop between two.
            # In one process the poll is the attribute test, written out (per batch).
            if iteration_done and (
                preemption.signal_number is not None if solo else preemption.poll()
            ):
                self._stop_for_signal(state)
        return self._batches_done(state, bar, stop, batches_at_start, resumed_inside_epoch)

    def _batches_done(
        self, state: TrainingState, bar: Any, stop: bool, started_at: int, resumed: bool
    ) -> bool:
        """Close the epoch's bar and end the epoch (EPOCH: its unit); return whether to stop.

        Args:
            state: the training state.
            bar: the epoch's bar, if any.
            stop: whether a stop was requested during the epoch.
            started_at: ``state.global_iteration`` when the epoch's batches began.
            resumed: whether the epoch was resumed inside (it may have no batches left).
        """
        if bar is not None:
            bar.close()
        if state.global_iteration == started_at and not resumed:
            raise _no_batches_error()
        state.dataset_iter = 0
        if self._epoch_unit:
            return self._end_unit(state, stop)
        self._end_epoch(state)
        return stop

    def _epoch_bar(self, state: TrainingState, batches: int | None) -> Any:
        """The transient bar of an epoch's batches (EPOCH unit, on a terminal)."""
        return make_bar(
            self.options.show_progress and self._epoch_unit, batches,
            f"Epoch {state.global_epoch}", "iter", initial=state.dataset_iter, leave=False,
        )  # fmt: skip

    def _end_unit(self, state: TrainingState, stop: bool = False) -> bool:
        """End a unit (an epoch or an iteration): validate, save; return whether to stop.

        Args:
            state: the training state.
            stop: whether a stop was already requested during the unit (EPOCH unit).
        """
        options, index = self.options, self._unit_index(state)
        self._report.unit_ending(state)
        if _due(index, options.valid_frequency):
            if self._guard is not None:
                self._guard.check(state)
            if self._rank_state is not None:
                self._rank_state.hold_rng()
            self._validate_and_track(state)
            if self._rank_state is not None:
                self._rank_state.release_rng()
            stop = stop or self.hooks.stop_requested()
            self._preemption.agree_soon()
        if self._epoch_unit:
            self._end_epoch(state)
        if _due(index, options.chkpt_frequency) and self.hooks.save_wanted():
            if self._guard is not None:
                self._guard.check(state)
            self._save(state)
            self._preemption.agree_soon()
        if self._bar is not None:
            self._bar.update()
            self._report.refresh_bar(self._bar, state, time.perf_counter())
        if stop:
            reason = STOP_REQUESTED
        elif self._early_stop_reached(state):
            reason = EARLY_STOPPING
        elif self._epoch_unit and self.hooks.stop_requested():
            reason = STOP_REQUESTED
        elif index >= options.total_steps:
            reason = TOTAL_STEPS
        else:
            return False
        self._end_run(state, reason)
        return True

    def _end_run(self, state: TrainingState, reason: str) -> None:
        """Note why training ends; a stop is recorded in one checkpoint written here.

        The checkpoint is written even where a periodic one was just written (it replaces
        it), so that the stop is in the newest checkpoint and a rerun trains nothing.
        """
        self.ended_by = reason
        if reason == TOTAL_STEPS:
            return
        if self._run_end is not None:
            self._run_end.record(reason, state)
        self._save(state)

    def _end_interrupted_epoch(self, state: TrainingState) -> bool:
        """End the epoch whose validation a signal interrupted (EPOCH unit); return stop."""
        if not (self._epoch_unit and self._unit_end_pending):
            return False
        self._unit_end_pending = False
        if self._resume is not None:
            self._resume.restore_rng()
            self._resume = None
        self._epoch_start_time = time.perf_counter()
        return self._end_unit(state)

    def _start_epoch(self, state: TrainingState, sampler: Any) -> None:
        """Begin an epoch, or re-enter the one a checkpoint was saved in."""
        resume, self._resume = self._resume, None
        resuming_inside_epoch = state.dataset_iter > 0
        if not resuming_inside_epoch:
            state.global_epoch += 1
            if resume is not None:
                resume.restore_rng()
            if self._rank_state is not None:
                self._rank_state.start_pass()
        logging.get_root_logger().info(f"Starting epoch {state.global_epoch}")
        self._epoch_start_time = time.perf_counter()
        self.model.on_training_epoch_start(state.global_epoch)
        position = {"epoch": state.global_epoch - 1, "start_iter": state.dataset_iter}
        if resuming_inside_epoch and resume is not None:
            resume.restore_rng()
            position = resume.resume_position(position)
        place_sampler(sampler, **position)
        if resuming_inside_epoch and self._loader_state is not None:
            self._loader_state.restore()  # a stream continues where it was

    def _end_epoch(self, state: TrainingState) -> None:
        self.model.on_training_epoch_end(state.global_epoch)
        elapsed = time.perf_counter() - self._epoch_start_time
        logging.get_root_logger().info(f"Epoch {state.global_epoch} completed in {elapsed:.2f}s")
        self._report.epoch_ended(state, elapsed)

    def _early_stop_reached(self, state: TrainingState) -> bool:
        cycles = self.options.early_stop_cycles
        return cycles is not None and state.early_stop_count >= cycles

    def _validate_and_track(self, state: TrainingState) -> None:
        """Run a validation cycle and update the cycle and early-stop counters.

        The running losses are read before the cycle and cleared after it by the loop
        itself: a model whose ``on_validation_end`` skips ``super()``, or a run without
        validation data (no cycle runs), still starts the next sums from zero.
        """
        if self._validation.loader is None:
            valid = self._datamodule.valid_dataloader()
            self._validation.loader = valid[0] if valid is not None else None
        loss_means = self._report.loss_means(state)
        batches = self._report.batches_summed(state)
        validated = self._validation.validate(state.validation_cycles)
        self._report.validated(state, loss_means, batches, validated)
        self.model.running_losses.clear()
        if validated and self._after_validation is not None:
            self._after_validation(state)
        state.validation_cycles += 1
        state.running_iter = 0
        improved = self.model.have_metrics_improved()
        if self.hooks.collective_device is not None:
            improved = not agree_any(not improved, self.hooks.collective_device)
        state.early_stop_count = 0 if improved else state.early_stop_count + 1


class EvaluationLoop:
    """Runs validation cycles and the testing loop.

    Args:
        hooks: the resolved hooks of the run.
        show_progress: whether this process draws progress bars.
        stop_requested: polled after every validation batch; when it answers True the cycle
            ends with :py:class:`ValidationInterruptedError`.
    """

    def __init__(
        self,
        hooks: Hooks,
        show_progress: bool,
        stop_requested: Callable[[], bool] | None = None,
    ) -> None:
        self.hooks = hooks
        self.model = hooks.model
        self.loader: Iterable[Any] | None = None
        self._show_progress = show_progress
        self._stop_requested = stop_requested

    def validate(self, cycle: int) -> bool:
        """Run one validation cycle; return whether it ran (not without a loader)."""
        if self.loader is None:
            return False
        hooks, model = self.hooks, self.model
        with core_cuda.DisableCuDNNBenchmarkContext():
            model.eval()
            hooks.call_plugins("on_validation_start", validation_cycle=cycle)
            model.on_validation_start(cycle)
            self._run_batches(
                self.loader,
                "Validation",
                hooks.process_validation_batch,
                hooks.on_validation_batch_start,
                model.valid_step,
                hooks.on_validation_batch_end,
                self._stop_requested,
            )
            model.train()
            hooks.call_plugins("on_validation_end", validation_cycle=cycle)
            model.on_validation_end(cycle)
        return True

    def test(self, loader: Iterable[Any]) -> None:
        """Run the testing loop over a loader."""
        hooks, model = self.hooks, self.model
        hooks.call_plugins("on_testing_start")
        model.on_testing_start()
        with core_cuda.DisableCuDNNBenchmarkContext():
            model.eval()
            self._run_batches(
                loader,
                "Testing",
                hooks.process_testing_batch,
                hooks.on_testing_batch_start,
                model.test_step,
                hooks.on_testing_batch_end,
            )
            hooks.call_plugins("on_testing_end")
            model.on_testing_end()

    def _run_batches(
        self,
        loader: Iterable[Any],
        label: str,
        process: Callable[..., Any] | None,
        batch_start: Callable[[int], None] | None,
        step_fn: Callable[[Any, int], None],
        batch_end: Callable[[int], None] | None,
        stop_requested: Callable[[], bool] | None = None,
    ) -> None:
        """Feed every batch of a loader through its hooks, without grad."""
        bar = make_bar(self._show_progress, _safe_len(loader), label, "it", leave=False)
        with torch.no_grad():
            for step, batch in enumerate(loader):
                if process is not None:
                    batch = process(batch=batch, step=step)
                if batch_start is not None:
                    batch_start(step)
                step_fn(batch, step)
                if batch_end is not None:
                    batch_end(step)
                if bar is not None:
                    bar.update()
                if stop_requested is not None and stop_requested():
                    if bar is not None:
                        bar.close()
                    raise ValidationInterruptedError
        if bar is not None:
            bar.close()


def _no_batches_error() -> RuntimeError:
    return RuntimeError(
        "the training dataloader produced no batches; with drop_last=True the dataset "
        "must hold at least one full batch"
    )


def _safe_len(loader: Any) -> int | None:
    try:
        return len(loader)
    except TypeError:
        return None


__all__ = [
    "EvaluationLoop",
    "Hooks",
    "LoopOptions",
    "TrainingLoop",
    "gradient_accumulators",
    "overrides",
]
