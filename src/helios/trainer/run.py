"""The run of one process: a fit (:py:class:`FitRun`) or a test (:py:class:`TestRun`).

The Trainer builds a run from its frozen configuration and a :py:class:`Job` (what
``fit``/``test`` was given); :py:func:`helios.trainer.launch.launch` calls its ``main`` in
every process of the run. ``main`` is the whole body, top to bottom::

    FitRun.main                        TestRun.main
      join the run (ranks, device)       join the run
      seed RNGs, configure torch         seed RNGs, configure torch
      claim the checkpoint folder        P.setup, data.setup, M.setup(fast_init=True)
      P.setup, data.setup, M.setup       newest checkpoint (or M.load_for_testing)
      newest checkpoint into the parts   EvaluationLoop.test
      unless the run already ended:
        P/M.on_training_start
        TrainingLoop.run               (loops.py: epochs -> batches -> ends of units)
        P/M.on_training_end
      a failure: shown, or re-raised when listed; loggers closed; group left

The run owns what a run has: its :py:class:`~helios.trainer.launch.RunContext`, its
precision, the table of its checkpoint parts (:py:mod:`helios.trainer.checkpoint.parts`,
built once, in restore order), the folder lock and the loops. It gives the model, the
plug-ins and the data module their place (device, local rank, the trainer) before their
``setup``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import torch

import helios.trainer.launch as launch
from helios.core import distributed as dist
from helios.core import logging, rng
from helios.core.distributed import agree_any
from helios.core.precision import Precision
from helios.core.training_state import TrainingState, TrainingUnit
from helios.core.utils import get_env_info_str, update_all_registries
from helios.model.model import register_model_types_for_safe_load

from .checkpoint.environment import EnvironmentPart
from .checkpoint.io import register_trainer_types_for_safe_load
from .checkpoint.layout import checkpoint_name
from .checkpoint.loader_state import LoaderState
from .checkpoint.model_part import ModelPart, RunningLossesPart
from .checkpoint.parts import CheckpointPart, OwnedPart, PartTable, StateOwner, add_extra_parts
from .checkpoint.rank_state import RankState
from .checkpoint.retention import CheckpointRetention
from .checkpoint.run_checkpoint import RunCheckpoint
from .failures import log_uncaught
from .loader_seed import LoaderSeed
from .logger_runs import LoggerStates
from .loops import EvaluationLoop, Hooks, TrainingLoop
from .nonfinite import NonFiniteGuard
from .preemption import Preemption
from .reporting import RunReport, run_summary
from .run_end import RunEnd, finished_message
from .run_folder import CheckpointFolderError, RunFolderLock
from .run_logs import RunLogs

if TYPE_CHECKING:
    from helios.core.placement import RunTrainer
    from helios.data import DataModule
    from helios.model import Model
    from helios.plugins import Plugin

    from .config import RunConfig


@dataclasses.dataclass(frozen=True)
class Job:
    """What one ``fit``/``test`` call was given, as its run sees it.

    Attributes:
        trainer: the Trainer (what the model, plug-ins and data module see as ``trainer``).
        model: the model.
        datamodule: the data.
        plugins: the registered plug-ins by id, in registration order.
        extra_parts: the extra checkpoint parts by name
            (:py:meth:`helios.trainer.Trainer.add_checkpoint_part`).
        listed: the exception types ``fit``/``test`` re-raises.
    """

    trainer: RunTrainer
    model: Model
    datamodule: DataModule
    plugins: Mapping[str, Plugin]
    extra_parts: Mapping[str, StateOwner]
    listed: tuple[type[Exception], ...]


@dataclasses.dataclass
class _Outcome:
    succeeded: bool = True


class Run:
    """What fit and test runs share: joining, the environment, set-up and the parts.

    Args:
        config: the trainer's configuration.
        job: what ``fit``/``test`` was given.
    """

    action = "run"

    def __init__(self, config: RunConfig, job: Job) -> None:
        self.config = config
        self.job = job
        self.context: launch.RunContext | None = None
        self.precision = Precision()
        self.parts = PartTable()
        self._run_logs = RunLogs(config.run_name, None, None)
        self._logger_states = LoggerStates([], TrainingState())

    def main(self, index: int | None = None, spawn: launch.Spawn | None = None) -> bool:
        """The whole body of the run in one process (see the module docstring).

        Args:
            index: the rank of a spawned process (``None``: this process, alone or one of
                ``torchrun``'s).
            spawn: what a spawned process got from the calling process.

        Returns:
            Whether the run succeeded (an unlisted exception was shown and swallowed).
        """
        raise NotImplementedError

    @property
    def shows_progress(self) -> bool:
        """Whether this process draws progress bars (global rank 0, when enabled)."""
        context = self.context
        return bool(self.config.enable_progress_bar) and (
            context is None or not context.global_rank
        )

    def prepare_data(self) -> None:
        """Prepare the data once per node (the data module's ``prepare_data``)."""
        self.job.datamodule.prepare_data()

    def listed_exceptions(self) -> tuple[type[Exception], ...]:
        """The exception types ``fit``/``test`` re-raises for this run."""
        return self.job.listed

    @contextlib.contextmanager
    def _process(self, index: int | None, spawn: launch.Spawn | None) -> Iterator[_Outcome]:
        """Join the run, run the body; show or re-raise its failure; close and leave.

        An exception is sent to the calling process by a spawned rank, else an unlisted one
        is shown with its traceback (stderr and the log file). Listed exceptions are
        re-raised, others make the run fail (``main`` returns False; a spawned rank then
        exits with :py:class:`~helios.trainer.launch.DistributedRunError`).
        """
        context = self.context = launch.join(self.config, index, spawn, self.prepare_data)
        outcome = _Outcome()
        try:
            yield outcome
        except Exception as error:
            outcome.succeeded = False
            if context.report is not None:
                context.report(error)
            if isinstance(error, self.job.listed):
                raise
            if context.report is None:
                log_uncaught(error, self.action)
        except BaseException as error:
            outcome.succeeded = False
            if context.report is not None:
                context.report(error)
            raise
        finally:
            self._logger_states.flush_and_close()
            logging.close_default_loggers()
            launch.leave(context, outcome.succeeded)
        if not outcome.succeeded and context.report is not None:
            raise launch.DistributedRunError(f"rank {context.global_rank} failed")

    def _configure_environment(self) -> None:
        """Seed every RNG, configure torch and the loggers, import the registries."""
        config = self.config
        register_trainer_types_for_safe_load()
        rng.seed_rngs(config.random_seed)
        if torch.are_deterministic_algorithms_enabled() != config.enable_deterministic:
            # Only on a change: the call costs seconds the first time in a process.
            torch.use_deterministic_algorithms(config.enable_deterministic)
        if not config.use_cpu:
            if config.enable_deterministic:
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.backends.cudnn.benchmark = config.enable_cudnn_benchmark
            torch.backends.cudnn.deterministic = config.enable_deterministic
            torch.cuda.set_device(self._context.device)
        logging.create_default_loggers(config.enable_tensorboard, config.capture_warnings)
        if config.src_root is not None:
            update_all_registries(config.src_root, recurse=True, import_prefix=config.import_prefix)

    @property
    def _context(self) -> launch.RunContext:
        assert self.context is not None, "the run has not joined yet"
        return self.context

    def _setup(self, fast_init: bool) -> None:
        """Place the plug-ins, the data and the model and set them up, in that order."""
        config, job, context = self.config, self.job, self._context
        for plugin in job.plugins.values():
            self._place(plugin)
            plugin.setup()
        job.datamodule.is_distributed = context.is_distributed
        job.datamodule.trainer = job.trainer
        job.datamodule.setup()
        self.precision = Precision(config.precision, context.device)
        self._place(job.model)
        job.model.setup(fast_init)
        self._run_logs = RunLogs(
            config.run_name,
            log_root=config.log_path if config.enable_file_logging else None,
            runs_root=config.run_path if config.enable_tensorboard else None,
        )
        if config.enable_compile:
            job.model.compile_networks()

    def _place(self, component: Model | Plugin) -> None:
        context = self._context
        component.is_distributed = context.is_distributed
        component.map_loc = context.map_location
        component.device = context.device
        component.rank = context.local_rank
        component.trainer = self.job.trainer

    def _checkpoint(self, state: TrainingState, fast_init: bool) -> RunCheckpoint:
        """The run's checkpoints, with its table of parts (every owner made here, once).

        A test run (``fast_init``) restores the networks only; its loggers log nothing.
        """
        config, context, model = self.config, self._context, self.job.model
        folder = config.chkpt_root / model.save_name if config.chkpt_root is not None else None
        self._preemption = Preemption(context.collective_device)
        self._run_end = RunEnd()
        loggers = [] if fast_init else config.loggers
        record = folder if context.global_rank == 0 and not fast_init else None
        self._logger_states = LoggerStates(loggers, state, record)
        self._rank_state = RankState(
            state, context.global_rank, context.world_size, config.random_seed
        )
        self._loader_state = LoaderState(state, context.global_rank)
        self._retention = CheckpointRetention(
            config.retention, folder, lambda: model.metrics, model.save_name
        )
        self.parts = self._part_table(
            ModelPart(model, fast_init), OwnedPart("training_state", state), self._retention
        )
        return RunCheckpoint(
            folder,
            self.parts,
            name=lambda at: model.append_metadata_to_chkpt_name(
                checkpoint_name(model.save_name, at)
            ),
            global_rank=context.global_rank,
            world_size=context.world_size,
            map_location=context.map_location,
            asynchronous=config.chkpt_async,
        )

    def _part_table(
        self, model: ModelPart, state: CheckpointPart, retention: CheckpointPart
    ) -> PartTable:
        """Every part of the run's checkpoints, in restore order."""
        table = PartTable()
        table.add(
            self._run_logs,
            model,
            RunningLossesPart(self.job.model),
            OwnedPart("precision", self.precision),
            LoaderSeed(self.job.datamodule, self.config.random_seed),
        )
        add_extra_parts(table, self.job.plugins, self.job.extra_parts)
        table.add(
            state,
            OwnedPart("preemption", self._preemption),
            self._logger_states,
            OwnedPart("run_end", self._run_end),
            EnvironmentPart(self._context.device),
            retention,
            self._rank_state,
            self._loader_state,
        )
        return table

    def _hooks(self) -> Hooks:
        return Hooks(
            self.job.model, list(self.job.plugins.values()), self._context.collective_device
        )


class FitRun(Run):
    """The fit of one process: train from the newest checkpoint to the end."""

    action = "fit"

    def main(self, index: int | None = None, spawn: launch.Spawn | None = None) -> bool:  # noqa: D102
        # The fit of one process, top to bottom (see the module docstring and loops.py).
        with self._process(index, spawn) as outcome:
            self._configure_environment()
            with self._folder_claimed():
                self._setup(fast_init=False)
                state = TrainingState()
                checkpoint = self._resume(state)
                if not self._already_finished(state):
                    loop = self._training_loop(state, checkpoint)
                    with self._training(checkpoint):
                        loop.run(state)
        return outcome.succeeded

    @contextlib.contextmanager
    def _folder_claimed(self) -> Iterator[None]:
        """Make rank 0 the only writer of the checkpoint folder, before anything trains.

        Every rank learns whether rank 0 got it, so no rank trains alone.
        """
        root, context = self.config.chkpt_root, self._context
        if root is None:
            yield
            return
        lock = None
        error: CheckpointFolderError | None = None
        if context.global_rank == 0:
            lock = RunFolderLock(root / self.job.model.save_name)
            try:
                lock.acquire()
            except CheckpointFolderError as refused:
                error = refused
        try:
            if agree_any(error is not None, context.collective_device):
                raise error or CheckpointFolderError(
                    "rank 0 could not claim the checkpoint folder (its log names the reason)"
                )
            yield
        finally:
            if lock is not None:
                lock.release()

    def _resume(self, state: TrainingState) -> RunCheckpoint:
        """Restore every part from the newest checkpoint; open the logs; say where from."""
        model, config = self.job.model, self.config
        checkpoint = self._checkpoint(state, fast_init=False)
        checkpoint.prepare_folder()
        register_model_types_for_safe_load(model)
        path = checkpoint.resume()
        self._finished = finished_message(
            self._run_end, state, config.train_unit, config.total_steps,
            self._preemption.unit_end_pending,
        )  # fmt: skip
        # Training again from the checkpoint: what was logged after it is logged again.
        self._run_logs.open(purge=self._finished is None)
        banner = model.append_to_banner(get_env_info_str())
        if path is not None:
            message = f"Resuming training from checkpoint {path}"
            logging.get_root_logger().info(message)
        if config.print_banner:
            dist.global_print(banner)
            if path is None:
                logging.get_root_logger().info(banner)
        if path is not None:
            dist.global_print(message + "\n")
        return checkpoint

    def _already_finished(self, state: TrainingState) -> bool:
        """Say so when the resumed run has nothing left to train (it ended before)."""
        if self._finished is not None:
            logging.get_root_logger().info(self._finished)
            dist.global_print(self._finished)
            logging.flush_default_loggers()
            dist.safe_barrier()
            return True
        self._prepare_loggers()
        context = self._context
        logging.get_root_logger().info(
            run_summary(self.job.model, context.device, self.precision.name, context.world_size)
        )
        return False

    def _prepare_loggers(self) -> None:
        """Continue the logged runs a killed run left, check where loggers write, resume.

        Raises:
            helios.loggers.LoggerDestinationError: on every rank, if one of rank 0's
                loggers cannot write where it would (before anything trains).
        """
        from helios.loggers import LoggerDestinationError

        states, context = self._logger_states, self._context
        error: LoggerDestinationError | None = None
        if context.global_rank == 0:
            states.continue_recorded_runs()
            try:
                states.check_destinations()
            except LoggerDestinationError as refused:
                error = refused
        if agree_any(error is not None, context.collective_device):
            raise error or LoggerDestinationError(
                "an experiment logger of rank 0 cannot write where it would (its log names it)"
            )
        states.resume_from_checkpoint_step()

    def _training_loop(self, state: TrainingState, checkpoint: RunCheckpoint) -> TrainingLoop:
        """Build the training loop of the run, with what it reports and what it guards."""
        config, model, context = self.config, self.job.model, self._context
        on_rank_zero = context.global_rank == 0
        report = RunReport(
            model,
            self._logger_states.loggers if on_rank_zero else [],
            show=on_rank_zero and config.print_summaries,
            defer_epoch_times=config.train_unit == TrainingUnit.ITERATION,
            accumulation_steps=(
                config.accumulation_steps if config.train_unit == TrainingUnit.ITERATION else 1
            ),
            logger_states=self._logger_states if on_rank_zero else None,
        )
        guard = None
        if config.nonfinite_guard:
            scaled = self.precision.scaler is not None
            guard = NonFiniteGuard(model, context.collective_device, check_losses=not scaled)
            checkpoint.check = guard.model_state_error
        self._loop_hooks = self._hooks()
        return TrainingLoop(
            config.loop_options(self.shows_progress), self._loop_hooks, self.job.datamodule,
            checkpoint.save, self._rank_state, self._preemption, report, self._run_end, guard,
            self._loader_state, after_validation=self._retention.validated,
        )  # fmt: skip

    @contextlib.contextmanager
    def _training(self, checkpoint: RunCheckpoint) -> Iterator[None]:
        """Signals handled, the training hooks around the loop, saves in flight awaited."""
        hooks, model = self._loop_hooks, self.job.model
        with self._preemption.handling_signals():
            hooks.call_plugins("on_training_start")
            model.on_training_start()
            try:
                yield
            except BaseException:
                checkpoint.close(raise_errors=False)
                raise
            checkpoint.close()
            self._preemption.settle()
        hooks.call_plugins("on_training_end")
        model.on_training_end()
        logging.flush_default_loggers()
        dist.safe_barrier()


class TestRun(Run):
    """The test of one process: the newest checkpoint's model (or the model's own) tested."""

    action = "test"

    def main(self, index: int | None = None, spawn: launch.Spawn | None = None) -> bool:  # noqa: D102
        # The test of one process: set up, load the newest checkpoint's weights, test.
        with self._process(index, spawn) as outcome:
            self._configure_environment()
            self._setup(fast_init=True)
            loader = self._load_for_testing()
            if loader is not None:
                EvaluationLoop(self._hooks(), self.shows_progress).test(loader)
                logging.flush_default_loggers()
                dist.safe_barrier()
        return outcome.succeeded

    def _load_for_testing(self) -> Any:
        """Load the newest checkpoint (or ``Model.load_for_testing``); return the loader."""
        model, root = self.job.model, logging.get_root_logger()
        register_model_types_for_safe_load(model)
        path = self._checkpoint(TrainingState(), fast_init=True).resume()
        self._run_logs.open_new()
        if path is not None:
            message = f"Testing using checkpoint {path}"
        else:
            model.load_for_testing()
            message = "Testing from loaded model"
        root.info(get_env_info_str())
        root.info(message)
        if self.config.print_banner:
            dist.global_print(model.append_to_banner(get_env_info_str()))
        dist.global_print(message + "\n")
        test = self.job.datamodule.test_dataloader()
        if test is None:
            root.warning("the datamodule has no test split; test() ran no batches")
            return None
        return test[0]


__all__ = ["FitRun", "Job", "Run", "TestRun"]
