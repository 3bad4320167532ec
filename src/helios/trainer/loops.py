"""The training, validation and testing loops.

This docstring is the single statement of the order in which the Trainer calls hooks; the
tests in ``tests/helios/trainer/test_call_order.py`` pin it. ``P`` stands for every
registered plug-in (in registration order), ``M`` for the model. Plug-ins always go first.
A hook that neither the model nor a plug-in overrides, and whose default does nothing, is
not called at all.

fit::

    P.setup(); datamodule.setup(); M.setup(fast_init=False)
    load the newest readable checkpoint (M.load_state_dict, P.load_state_dict, state)
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
    if e % chkpt_frequency == 0: save checkpoint      # after on_training_epoch_end
    if early_stop_count >= early_stop_cycles or P/M.should_training_stop(): stop

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
                if i % chkpt_frequency == 0: save checkpoint
                if early_stop_count >= early_stop_cycles or i >= total_steps: stop
        M.on_training_epoch_end(e)                       # also for an epoch cut short

validate(cycle)::

    M.eval(); P.on_validation_start(cycle); M.on_validation_start(cycle)
    for each batch (under torch.no_grad()):
        batch = P.process_validation_batch(batch, step)  # first P with validation_batch
        M.on_validation_batch_start(step); M.valid_step(batch, step)
        M.on_validation_batch_end(step)
    M.train(); P.on_validation_end(cycle); M.on_validation_end(cycle)

test::

    P.setup(); datamodule.setup(); M.setup(fast_init=True)
    load the newest checkpoint (weights only) or else M.load_for_testing()
    P.on_testing_start(); M.on_testing_start(); M.eval()
    for each batch (under torch.no_grad()):
        batch = P.process_testing_batch(batch, step)
        M.on_testing_batch_start(step); M.test_step(batch, step); M.on_testing_batch_end(step)
    P.on_testing_end(); M.on_testing_end()

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

import math
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch

from helios.core import cuda as core_cuda
from helios.core import rng

from . import progress
from .state import TrainingState, TrainingUnit

if TYPE_CHECKING:
    from helios.model import Model
    from helios.plugins import Plugin

    from .trainer import Trainer


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

    def _batch_processor(self, flag: str, method: str) -> Callable[..., Any] | None:
        for plugin in self.plugins:
            if getattr(plugin.unique_overrides, flag):
                return getattr(plugin, method)  # type: ignore[no-any-return]
        return None

    def call_plugins(self, name: str, *args: Any, **kwargs: Any) -> None:
        """Call a hook on every plug-in, in registration order."""
        for plugin in self.plugins:
            getattr(plugin, name)(*args, **kwargs)

    def should_stop(self) -> bool:
        """Ask the plug-ins, then the model, whether to stop (agreed across ranks).

        In one process the first "stop" ends the questioning. When distributed every check
        runs on every rank, because a check may itself be a collective (a broadcast).
        """
        if self.collective_device is None:
            return any(check() for check in self._stop_checks)
        answers = [check() for check in self._stop_checks]
        return agree_any(any(answers), self.collective_device)


def agree_any(flag: bool, device: torch.device | None) -> bool:
    """Return True on every rank if any rank's flag is True.

    Args:
        flag: this rank's decision.
        device: the device for the collective, or ``None`` when not distributed.

    Returns:
        The agreed decision.
    """
    if device is None:
        return flag
    tensor = torch.tensor([int(flag)], device=device)
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
    return bool(tensor.item())


class Loops:
    """Runs the loops of one ``fit`` or ``test`` call for a :py:class:`Trainer`.

    Args:
        trainer: the trainer, which owns the options and the checkpoint writer.
        hooks: the resolved hooks of the run.
        resume_rng: RNG state to restore at the resume point, if resuming.
    """

    def __init__(
        self, trainer: Trainer, hooks: Hooks, resume_rng: dict[str, Any] | None = None
    ) -> None:
        self.trainer = trainer
        self.hooks = hooks
        self.model = hooks.model
        self._resume_rng = resume_rng
        self._valid_loader: Iterable[Any] | None = None
        self._show_progress = trainer.shows_progress

    # -- training -------------------------------------------------------------------------

    def run_training(self, state: TrainingState) -> None:
        """Run the training loop of the trainer's unit, resuming from ``state``."""
        train = self.trainer.datamodule.train_dataloader()
        if train is None:
            raise RuntimeError(
                "error: the datamodule has no training split: train_dataloader() returned "
                "None. Set self._train_dataset in DataModule.setup()"
            )
        loader, sampler = train
        self.model.train()
        if self.trainer.train_unit == TrainingUnit.EPOCH:
            self._run_epochs(state, loader, sampler)
        else:
            self._run_iterations(state, loader, sampler)

    def _run_epochs(self, state: TrainingState, loader: Any, sampler: Any) -> None:
        trainer, hooks, model = self.trainer, self.hooks, self.model
        total = trainer.total_steps
        bar = progress.make_bar(
            self._show_progress, None if total == math.inf else total, "Training epochs",
            "epoch", initial=state.global_epoch,
        )  # fmt: skip
        while state.global_epoch < total or state.dataset_iter > 0:
            self._start_epoch(state, sampler)
            stop = self._train_batches(state, loader, len(loader))
            state.dataset_iter = 0
            if trainer.valid_frequency and state.global_epoch % trainer.valid_frequency == 0:
                self._validate_and_track(state)
                stop = stop or (hooks.has_stop_checks and hooks.should_stop())
            model.on_training_epoch_end(state.global_epoch)
            self._log_epoch_time(state)
            if trainer.chkpt_frequency and state.global_epoch % trainer.chkpt_frequency == 0:
                trainer.save_checkpoint(state)
            if bar is not None:
                bar.update()
            if stop or self._early_stop_reached(state):
                break
            if hooks.has_stop_checks and hooks.should_stop():
                break
        if bar is not None:
            bar.close()

    def _train_batches(self, state: TrainingState, loader: Any, total: int) -> bool:
        """Train one epoch's batches (EPOCH unit); return whether a stop was requested."""
        hooks, model = self.hooks, self.model
        process = hooks.process_training_batch
        print_frequency = self.trainer.print_frequency
        bar = progress.make_bar(
            self._show_progress, total, f"Epoch {state.global_epoch}", "iter",
            initial=state.dataset_iter, leave=False,
        )  # fmt: skip
        timer_sum, timer_count, last = 0.0, 0, time.perf_counter()
        stop = False
        for batch in loader:
            state.global_iteration += 1
            state.current_iteration += 1
            state.running_iter += 1
            if process is not None:
                batch = process(batch=batch, state=state)
            model.on_training_batch_start(state)
            model.train_step(batch, state)
            now = time.perf_counter()
            timer_sum, timer_count, last = timer_sum + now - last, timer_count + 1, now
            state.average_iter_time = timer_sum / timer_count
            should_log = print_frequency is not None and (
                state.current_iteration % print_frequency == 0
            )
            model.on_training_batch_end(state, should_log=should_log)
            state.dataset_iter += 1
            if bar is not None:
                bar.update()
            if hooks.has_stop_checks and hooks.should_stop():
                stop = True
                break
        if bar is not None:
            bar.close()
        return stop

    def _run_iterations(self, state: TrainingState, loader: Any, sampler: Any) -> None:
        trainer, hooks, model = self.trainer, self.hooks, self.model
        total, accumulation = trainer.total_steps, trainer.accumulation_steps
        valid_frequency, chkpt_frequency = trainer.valid_frequency, trainer.chkpt_frequency
        print_frequency = trainer.print_frequency
        process = hooks.process_training_batch
        bar = progress.make_bar(
            self._show_progress, None if total == math.inf else total, "Training iterations",
            "it", initial=state.current_iteration,
        )  # fmt: skip
        done = state.current_iteration >= total
        while not done:
            resumed_inside_epoch = state.dataset_iter > 0
            self._start_epoch(state, sampler)
            timer_sum, timer_count, last = 0.0, 0, time.perf_counter()
            batches_at_start = state.global_iteration
            for batch in loader:
                state.global_iteration += 1
                boundary = state.global_iteration % accumulation == 0
                if boundary:
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
                    boundary
                    and print_frequency is not None
                    and state.current_iteration % print_frequency == 0
                )
                model.on_training_batch_end(state, should_log=should_log)
                state.dataset_iter += 1
                if hooks.has_stop_checks and hooks.should_stop():
                    done = True
                    break
                if not boundary:
                    continue
                if bar is not None:
                    bar.update()
                iteration = state.current_iteration
                if valid_frequency and iteration % valid_frequency == 0:
                    self._validate_and_track(state)
                    done = hooks.has_stop_checks and hooks.should_stop()
                if chkpt_frequency and iteration % chkpt_frequency == 0:
                    trainer.save_checkpoint(state)
                if done or self._early_stop_reached(state) or iteration >= total:
                    done = True
                    break
            if state.global_iteration == batches_at_start and not resumed_inside_epoch:
                raise RuntimeError(
                    "error: the training dataloader produced no batches; with "
                    "drop_last=True the dataset must hold at least one full batch"
                )
            state.dataset_iter = 0
            model.on_training_epoch_end(state.global_epoch)
            self._log_epoch_time(state)
        if bar is not None:
            bar.close()

    def _start_epoch(self, state: TrainingState, sampler: Any) -> None:
        """Begin an epoch, or re-enter the one a checkpoint was saved in."""
        resuming_inside_epoch = state.dataset_iter > 0
        if not resuming_inside_epoch:
            state.global_epoch += 1
            self._restore_rng_if_resuming()
        self.trainer.root_logger.info(f"Starting epoch {state.global_epoch}")
        self._epoch_start_time = time.perf_counter()
        self.model.on_training_epoch_start(state.global_epoch)
        if resuming_inside_epoch:
            self._restore_rng_if_resuming()
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(state.global_epoch - 1)
        if hasattr(sampler, "start_iter"):
            sampler.start_iter = state.dataset_iter

    def _restore_rng_if_resuming(self) -> None:
        if self._resume_rng is not None:
            rng.load_rng_state_dict(self._resume_rng)
            self._resume_rng = None

    def _log_epoch_time(self, state: TrainingState) -> None:
        elapsed = time.perf_counter() - self._epoch_start_time
        self.trainer.root_logger.info(f"Epoch {state.global_epoch} completed in {elapsed:.2f}s")

    def _early_stop_reached(self, state: TrainingState) -> bool:
        cycles = self.trainer.early_stop_cycles
        return cycles is not None and state.early_stop_count >= cycles

    def _validate_and_track(self, state: TrainingState) -> None:
        """Run a validation cycle and update the cycle and early-stop counters."""
        self.validate(state.validation_cycles)
        state.validation_cycles += 1
        state.running_iter = 0
        improved = self.model.have_metrics_improved()
        if self.hooks.collective_device is not None:
            improved = not agree_any(not improved, self.hooks.collective_device)
        state.early_stop_count = 0 if improved else state.early_stop_count + 1

    # -- validation and testing -----------------------------------------------------------

    def validate(self, cycle: int) -> None:
        """Run one validation cycle (nothing happens without a validation split)."""
        if self._valid_loader is None:
            valid = self.trainer.datamodule.valid_dataloader()
            if valid is None:
                return
            self._valid_loader = valid[0]
        hooks, model = self.hooks, self.model
        with core_cuda.DisableCuDNNBenchmarkContext():
            model.eval()
            hooks.call_plugins("on_validation_start", validation_cycle=cycle)
            model.on_validation_start(cycle)
            _run_evaluation_batches(
                self._valid_loader,
                self._show_progress,
                "Validation",
                hooks.process_validation_batch,
                hooks.on_validation_batch_start,
                model.valid_step,
                hooks.on_validation_batch_end,
            )
            model.train()
            hooks.call_plugins("on_validation_end", validation_cycle=cycle)
            model.on_validation_end(cycle)

    def run_testing(self, loader: Iterable[Any]) -> None:
        """Run the testing loop over a loader."""
        hooks, model = self.hooks, self.model
        hooks.call_plugins("on_testing_start")
        model.on_testing_start()
        with core_cuda.DisableCuDNNBenchmarkContext():
            model.eval()
            _run_evaluation_batches(
                loader,
                self._show_progress,
                "Testing",
                hooks.process_testing_batch,
                hooks.on_testing_batch_start,
                model.test_step,
                hooks.on_testing_batch_end,
            )
            hooks.call_plugins("on_testing_end")
            model.on_testing_end()


def _run_evaluation_batches(
    loader: Iterable[Any],
    show_progress: bool,
    label: str,
    process: Callable[..., Any] | None,
    batch_start: Callable[[int], None] | None,
    step_fn: Callable[[Any, int], None],
    batch_end: Callable[[int], None] | None,
) -> None:
    """Feed every batch of a validation or testing loader through its hooks, without grad."""
    bar = progress.make_bar(show_progress, _safe_len(loader), label, "it", leave=False)
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
    if bar is not None:
        bar.close()


def _safe_len(loader: Any) -> int | None:
    try:
        return len(loader)
    except TypeError:
        return None


__all__ = ["Hooks", "Loops", "agree_any", "overrides"]
