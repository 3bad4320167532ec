"""The Trainer: checks its arguments, prepares the environment and runs fit/test."""

from __future__ import annotations

import enum
import logging as _std_logging
import os
import pathlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from helios.core import distributed as dist
from helios.core import logging, rng
from helios.core.precision import Precision
from helios.core.utils import get_env_info_str, get_from_optional, update_all_registries
from helios.model import default_state, sharding
from helios.model.model import register_model_types_for_safe_load
from helios.plugins.plugin import validate_plugins

from . import arguments, checkpoints, failures, launch
from .loops import EvaluationLoop, Hooks, LoopOptions, TrainingLoop, agree_any
from .nonfinite import NonFiniteGuard
from .preemption import Preemption
from .reporting import LoggerStates, RunReport, run_summary
from .retention import CheckpointRetention
from .run_end import RunEnd, finished_message
from .run_folder import CheckpointFolderError, RunFolderLock
from .run_logs import RunLogs
from .state import TrainingState, TrainingUnit

if TYPE_CHECKING:
    import torch.multiprocessing as mp

    from helios.data import DataModule
    from helios.loggers import ExperimentLogger
    from helios.model import Model
    from helios.plugins import Plugin


class _Mode(enum.Enum):
    TRAIN = "fit"
    TEST = "test"


class Trainer:
    """Runs training, validation and testing of a Model on a DataModule.

    The Trainer sets up the environment (seeds, determinism, devices, logging, distributed
    processes), runs the loops (see :py:mod:`helios.trainer.loops` for the exact call order),
    saves checkpoints atomically and resumes exactly from the newest one.

    While ``fit`` runs it owns its checkpoint folder (a second run on it refuses to start,
    naming the holder; see :py:mod:`helios.trainer.run_folder`), and a folder that cannot be
    written fails ``fit`` before anything trains. A run that ended (early stopping,
    ``should_training_stop``, or ``total_steps`` reached) trains nothing when run again; a
    larger ``total_steps`` continues a run that reached its ``total_steps`` (see
    :py:mod:`helios.trainer.run_end`).

    Args:
        run_name: name of the run, used for log files and TensorBoard runs.
        train_unit: unit of ``total_steps`` and of the frequencies: ``TrainingUnit.EPOCH``
            (or ``"epoch"``) or ``TrainingUnit.ITERATION`` (``"iteration"``).
        total_steps: number of epochs or iterations to train for; ``math.inf`` trains until
            early stopping or ``should_training_stop``.
        valid_frequency: validate every this many units (``None``: never).
        chkpt_frequency: save a checkpoint every this many units (``None``: never); needs
            ``chkpt_root``.
        print_frequency: set ``should_log`` every this many iterations (``None``: never).
        accumulation_steps: batches per iteration with gradient accumulation (ITERATION unit).
        enable_cudnn_benchmark: enable cuDNN benchmarking.
        enable_deterministic: use PyTorch's deterministic algorithms.
        early_stop_cycles: stop after this many validation cycles without improvement.
        use_cpu: train on the CPU; ``None`` picks the CPU when CUDA is unavailable.
        gpus: ids of the GPUs to use; several start one process per GPU.
        random_seed: seed for every RNG (defaults to :py:func:`helios.core.rng.get_default_seed`).
        enable_tensorboard: write a TensorBoard run into ``run_path``.
        enable_file_logging: write a log file into ``log_path``.
        enable_progress_bar: show progress bars.
        chkpt_root: folder for checkpoints (a sub-folder per model ``save_name``).
        log_path: folder for log files (used only with ``enable_file_logging``).
        run_path: folder for TensorBoard runs (used only with ``enable_tensorboard``).
        src_root: root package whose registries are imported in every process.
        import_prefix: dotted prefix for importing ``src_root``.
        print_banner: print the banner with environment information at start.
        capture_warnings: route Python warnings into the run's log while it runs.
        loggers: experiment loggers (:py:mod:`helios.loggers`: CSV, MLflow, W&B) that get
            the running losses, the model's ``metrics`` after each validation, the learning
            rates and the epoch times; their state is part of every checkpoint, so a resumed
            run continues the same logged runs.
        precision: ``"32"``, ``"bf16-mixed"`` or ``"fp16-mixed"`` (see
            :py:mod:`helios.core.precision`); used by the Model's
            :py:meth:`~helios.model.Model.autocast`, :py:meth:`~helios.model.Model.backward`,
            :py:meth:`~helios.model.Model.clip_gradients` and
            :py:meth:`~helios.model.Model.optimizer_step`.
        enable_compile: compile the model's networks with ``torch.compile`` after
            ``Model.setup`` (see :py:meth:`~helios.model.Model.compile_networks`).
        chkpt_keep_last: keep only the newest this many checkpoints (with
            ``chkpt_keep_best``: also those); ``None`` with ``chkpt_keep_best`` also
            ``None`` keeps every checkpoint. The newest checkpoint is never deleted. See
            :py:mod:`helios.trainer.retention`.
        chkpt_keep_best: also keep the this many checkpoints with the best
            ``chkpt_best_metric``.
        chkpt_best_metric: key of the model's ``metrics`` table that ranks checkpoints;
            with it the folder gets an index naming the best one
            (:py:func:`~helios.trainer.find_best_checkpoint`).
        chkpt_best_mode: ``"max"`` (higher is better) or ``"min"``.
        chkpt_async: write checkpoints in a background thread after copying the state
            synchronously (see :py:mod:`helios.trainer.async_save`).
        nonfinite_guard: stop training on a NaN/inf loss or model state and never save it
            (see :py:mod:`helios.trainer.nonfinite` for what is checked when).
        print_summaries: print one line after each validation (the model's ``metrics`` and
            the running losses) and one when training ends, on rank 0; the log file gets
            them either way.

    Raises:
        ValueError: for an invalid value or combination of arguments.
        TypeError: for an argument of the wrong type.
        RuntimeError: if CUDA is requested but unavailable.
    """

    def __init__(
        self,
        run_name: str = "",
        train_unit: TrainingUnit | str = TrainingUnit.EPOCH,
        total_steps: int | float = 0,
        valid_frequency: int | None = None,
        chkpt_frequency: int | None = None,
        print_frequency: int | None = None,
        accumulation_steps: int = 1,
        enable_cudnn_benchmark: bool = False,
        enable_deterministic: bool = False,
        early_stop_cycles: int | None = None,
        use_cpu: bool | None = None,
        gpus: list[int] | None = None,
        random_seed: int | None = None,
        enable_tensorboard: bool = False,
        enable_file_logging: bool = False,
        enable_progress_bar: bool = False,
        chkpt_root: pathlib.Path | None = None,
        log_path: pathlib.Path | None = None,
        run_path: pathlib.Path | None = None,
        src_root: pathlib.Path | None = None,
        import_prefix: str = "",
        print_banner: bool = True,
        capture_warnings: bool = False,
        loggers: Sequence[ExperimentLogger] | None = None,
        precision: str = "32",
        enable_compile: bool = False,
        chkpt_keep_last: int | None = None,
        chkpt_keep_best: int | None = None,
        chkpt_best_metric: str | None = None,
        chkpt_best_mode: str = "max",
        chkpt_async: bool = False,
        nonfinite_guard: bool = True,
        print_summaries: bool = True,
    ) -> None:
        if not isinstance(run_name, str):
            raise TypeError(f"error: run_name must be a str, but received {run_name!r}")
        self._run_name = run_name
        self._train_unit = arguments.check_train_unit(train_unit)
        self._total_steps = arguments.check_total_steps(total_steps)
        self._valid_frequency = arguments.check_positive_int("valid_frequency", valid_frequency)
        self._chkpt_frequency = arguments.check_positive_int("chkpt_frequency", chkpt_frequency)
        self._print_frequency = arguments.check_positive_int("print_frequency", print_frequency)
        self._accumulation_steps = get_from_optional(
            arguments.check_positive_int("accumulation_steps", accumulation_steps, False)
        )
        self._early_stop_cycles = arguments.check_positive_int(
            "early_stop_cycles", early_stop_cycles
        )
        self._random_seed = arguments.check_random_seed(random_seed)
        if self._random_seed is None:
            self._random_seed = rng.get_default_seed()
        self._chkpt_root = arguments.check_path("chkpt_root", chkpt_root)
        self._log_path = arguments.check_path("log_path", log_path)
        self._run_path = arguments.check_path("run_path", run_path)
        self._src_root = arguments.check_path("src_root", src_root)
        arguments.check_flags(
            enable_deterministic=enable_deterministic,
            enable_cudnn_benchmark=enable_cudnn_benchmark,
            enable_tensorboard=enable_tensorboard,
            run_path=self._run_path,
            enable_file_logging=enable_file_logging,
            log_path=self._log_path,
            chkpt_frequency=self._chkpt_frequency,
            chkpt_root=self._chkpt_root,
            src_root=self._src_root,
        )
        self._enable_cudnn_benchmark = enable_cudnn_benchmark
        self._enable_deterministic = enable_deterministic
        self._enable_tensorboard = enable_tensorboard
        self._enable_file_logging = enable_file_logging
        self._enable_progress_bar = enable_progress_bar
        self._import_prefix = import_prefix
        self._print_banner = print_banner
        self._capture_warnings = bool(capture_warnings)
        self._loggers = arguments.check_loggers(loggers)
        self._retention_policy = arguments.check_retention(
            chkpt_keep_last, chkpt_keep_best, chkpt_best_metric, chkpt_best_mode
        )
        self._chkpt_async = arguments.check_bool("chkpt_async", chkpt_async)
        self._nonfinite_guard = arguments.check_bool("nonfinite_guard", nonfinite_guard)
        self._print_summaries = arguments.check_bool("print_summaries", print_summaries)

        self._place_devices(use_cpu, gpus)
        self._precision_name = arguments.check_precision(precision, not self._use_cpu)
        self._enable_compile = arguments.check_bool("enable_compile", enable_compile)
        self._precision = Precision()

        self._model: Model | None = None
        self._datamodule: DataModule | None = None
        self._local_rank = 0
        self._rank = 0
        self._train_exceptions: list[type[Exception]] = []
        self._test_exceptions: list[type[Exception]] = []
        self._plugins: dict[str, Plugin] = {}
        self._queue: mp.Queue | None = None
        self._reset_run_parts()

    def _reset_run_parts(self) -> None:
        """Give the owners of a run's checkpoint parts their state before any run."""
        self._run_logs = RunLogs(self._run_name, None, None)
        self._preemption = Preemption()
        self._logger_states = LoggerStates([], TrainingState())
        self._run_end = RunEnd()
        self._retention = CheckpointRetention(self._retention_policy, None, dict)

    def _place_devices(self, use_cpu: bool | None, gpus: list[int] | None) -> None:
        """Pick the device, the GPU ids and whether the run is distributed."""
        gpu_ids = arguments.check_gpus(gpus, use_cpu)

        self._use_cpu = use_cpu if use_cpu is not None else not torch.cuda.is_available()
        self._is_torchrun = dist.is_using_torchrun()
        if self._use_cpu:
            self._gpu_ids: list[int] = []
            self._device = torch.device("cpu")
            self._map_loc: str | dict[str, str] = {"cuda:0": "cpu"}
        else:
            self._gpu_ids = gpu_ids or list(range(torch.cuda.device_count()))
            self._device = torch.device("cuda", self._gpu_ids[0])
            self._map_loc = {"cuda:0": str(self._device)}
        if self._is_torchrun:
            self._is_distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
            local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
            if not self._use_cpu and local_world_size > len(self._gpu_ids):
                raise ValueError(
                    f"error: torchrun started {local_world_size} processes on this node "
                    f"(LOCAL_WORLD_SIZE) but gpus={self._gpu_ids} gives only "
                    f"{len(self._gpu_ids)} GPU(s); each process needs its own GPU"
                )
        else:
            self._is_distributed = len(self._gpu_ids) > 1

    # -- properties -----------------------------------------------------------------------

    @property
    def model(self) -> Model:
        """The model of the current run."""
        return get_from_optional(self._model)

    @model.setter
    def model(self, model: Model) -> None:
        self._model = model

    @property
    def datamodule(self) -> DataModule:
        """The datamodule of the current run."""
        return get_from_optional(self._datamodule)

    @datamodule.setter
    def datamodule(self, datamodule: DataModule) -> None:
        self._datamodule = datamodule

    @property
    def local_rank(self) -> int:
        """The rank of this process on its node (its GPU index into ``gpu_ids``)."""
        return self._local_rank

    @local_rank.setter
    def local_rank(self, rank: int) -> None:
        if not self._use_cpu:
            if not 0 <= rank < len(self._gpu_ids):
                raise ValueError(
                    f"error: local_rank={rank} has no GPU: gpus={self._gpu_ids} holds "
                    f"{len(self._gpu_ids)} id(s)"
                )
            self._device = torch.device("cuda", self._gpu_ids[rank])
            self._map_loc = {f"cuda:{i}": str(self._device) for i in self._gpu_ids}
            self._map_loc.setdefault("cuda:0", str(self._device))
        self._local_rank = rank

    @property
    def rank(self) -> int:
        """The global rank of this process."""
        return self._rank

    @rank.setter
    def rank(self, rank: int) -> None:
        self._rank = rank

    @property
    def gpu_ids(self) -> list[int]:
        """The ids of the GPUs used for training (empty on the CPU)."""
        return self._gpu_ids

    @property
    def train_exceptions(self) -> list[type[Exception]]:
        """Exception types that ``fit`` re-raises instead of logging and returning False."""
        return self._train_exceptions

    @train_exceptions.setter
    def train_exceptions(self, exceptions: list[type[Exception]]) -> None:
        self._train_exceptions = exceptions

    @property
    def test_exceptions(self) -> list[type[Exception]]:
        """Exception types that ``test`` re-raises instead of logging and returning False."""
        return self._test_exceptions

    @test_exceptions.setter
    def test_exceptions(self, exceptions: list[type[Exception]]) -> None:
        self._test_exceptions = exceptions

    @property
    def plugins(self) -> dict[str, Plugin]:
        """The registered plug-ins, keyed by their id."""
        return self._plugins

    @plugins.setter
    def plugins(self, plugins: dict[str, Plugin]) -> None:
        self._plugins = plugins

    @property
    def queue(self) -> mp.Queue | None:
        """Queue for results from spawned ranks (``None`` in one process or under torchrun)."""
        return self._queue

    @queue.setter
    def queue(self, queue: mp.Queue | None) -> None:
        self._queue = queue

    @property
    def train_unit(self) -> TrainingUnit:
        """The training unit."""
        return self._train_unit

    @property
    def total_steps(self) -> int | float:
        """The number of epochs or iterations to train for."""
        return self._total_steps

    @property
    def valid_frequency(self) -> int | None:
        """Validation frequency, in training units."""
        return self._valid_frequency

    @property
    def chkpt_frequency(self) -> int | None:
        """Checkpoint frequency, in training units."""
        return self._chkpt_frequency

    @property
    def print_frequency(self) -> int | None:
        """Logging frequency, in iterations."""
        return self._print_frequency

    @property
    def accumulation_steps(self) -> int:
        """Batches per iteration."""
        return self._accumulation_steps

    @property
    def early_stop_cycles(self) -> int | None:
        """Validation cycles without improvement after which training stops."""
        return self._early_stop_cycles

    @property
    def is_distributed(self) -> bool:
        """Whether the run uses several processes."""
        return self._is_distributed

    @property
    def uses_cpu(self) -> bool:
        """Whether the run is on the CPU."""
        return self._use_cpu

    @property
    def device(self) -> torch.device:
        """The device of this process."""
        return self._device

    @property
    def shows_progress(self) -> bool:
        """Whether this process shows progress bars (rank 0, when enabled)."""
        return self._enable_progress_bar and self._rank == 0

    @property
    def precision(self) -> Precision:
        """The precision of the current run (autocast settings and gradient scaler)."""
        return self._precision

    @property
    def root_logger(self) -> logging.RootLogger:
        """The root logger of the current run."""
        return logging.get_root_logger()

    # -- fit and test ---------------------------------------------------------------------

    def fit(self, model: Model, datamodule: DataModule) -> bool:
        """Train (and validate) the model, resuming from the newest checkpoint if any.

        Args:
            model: the model to train.
            datamodule: the data.

        Returns:
            True if training completed; False if an exception not listed in
            ``train_exceptions`` was raised (its full traceback is logged).

        Raises:
            TypeError: if ``model`` or ``datamodule`` has the wrong type.
            ValueError: if ``total_steps`` is 0, which leaves nothing to train.
        """
        if self._total_steps == 0:
            raise ValueError(
                "error: fit() with total_steps=0 has nothing to train; pass total_steps (the "
                f"number of {self._train_unit.name.lower()}s) to the Trainer"
            )
        return self._launch(model, datamodule, _Mode.TRAIN)

    def test(self, model: Model, datamodule: DataModule) -> bool:
        """Test the model from the newest checkpoint (or ``Model.load_for_testing``).

        Args:
            model: the model to test.
            datamodule: the data.

        Returns:
            True if testing completed; False if an exception not listed in
            ``test_exceptions`` was raised (its full traceback is logged).

        Raises:
            TypeError: if ``model`` or ``datamodule`` has the wrong type.
        """
        return self._launch(model, datamodule, _Mode.TEST)

    def _launch(self, model: Model, datamodule: DataModule, mode: _Mode) -> bool:
        from helios.data import DataModule
        from helios.model import Model

        if not isinstance(model, Model):
            raise TypeError(
                f"error: {mode.value}() expects a helios.model.Model as model, but received "
                f"{type(model).__name__}"
            )
        if not isinstance(datamodule, DataModule):
            raise TypeError(
                f"error: {mode.value}() expects a helios.data.DataModule as datamodule, but "
                f"received {type(datamodule).__name__}"
            )
        validate_plugins(self._plugins)
        listed = self._listed_exceptions(mode)
        try:
            if launch.use_spawn(self):
                datamodule.prepare_data()
                return launch.run_spawned(
                    self, _spawned_worker, (self, model, datamodule, mode), len(self._gpu_ids)
                )
            self.model, self.datamodule = model, datamodule
            return launch.run_in_process(
                self, lambda: self._run_in_process(mode), datamodule.prepare_data
            )
        except Exception as error:
            if isinstance(error, (*listed, launch.DistributedRunError)):
                raise
            _log_uncaught(error, mode)
            return False

    def _listed_exceptions(self, mode: _Mode) -> list[type[Exception]]:
        return self._train_exceptions if mode == _Mode.TRAIN else self._test_exceptions

    def _run_in_process(
        self, mode: _Mode, report: Callable[[BaseException], None] | None = None
    ) -> bool:
        """Run the whole fit/test body in this process; handle exceptions and loggers.

        An exception is passed to ``report`` if given (spawned ranks send it to the calling
        process, which shows it), else an unlisted one is logged with its traceback. Listed
        exceptions are re-raised, others make this return False.
        """
        listed = self._listed_exceptions(mode)
        try:
            self._configure_environment()
            if mode == _Mode.TRAIN:
                self._train()
            else:
                self._test()
        except Exception as error:
            if report is not None:
                report(error)
            if isinstance(error, tuple(listed)):
                raise
            if report is None:
                _log_uncaught(error, mode)
            return False
        finally:
            self._logger_states.flush_and_close()
            logging.close_default_loggers()
        return True

    def _configure_environment(self) -> None:
        checkpoints.register_trainer_types_for_safe_load()
        rng.seed_rngs(self._random_seed)
        if torch.are_deterministic_algorithms_enabled() != self._enable_deterministic:
            # Only on a change: the call costs seconds the first time in a process.
            torch.use_deterministic_algorithms(self._enable_deterministic)
        if not self._use_cpu:
            if self._enable_deterministic:
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.backends.cudnn.benchmark = self._enable_cudnn_benchmark
            torch.backends.cudnn.deterministic = self._enable_deterministic
            torch.cuda.set_device(self._device)
        logging.create_default_loggers(self._enable_tensorboard, self._capture_warnings)
        if self._src_root is not None:
            update_all_registries(self._src_root, recurse=True, import_prefix=self._import_prefix)

    def _setup(self, fast_init: bool) -> None:
        for plugin in self._plugins.values():
            plugin.is_distributed = self._is_distributed
            plugin.map_loc = self._map_loc
            plugin.device = self._device
            plugin.rank = self._local_rank
            plugin.trainer = self
            plugin.setup()
        datamodule = self.datamodule
        datamodule.is_distributed = self._is_distributed
        datamodule.trainer = self
        datamodule.setup()
        self._precision = Precision(self._precision_name, self._device)
        model = self.model
        model.map_loc = self._map_loc
        model.is_distributed = self._is_distributed
        model.device = self._device
        model.rank = self._local_rank
        model.trainer = self
        model.setup(fast_init)
        self._run_logs = RunLogs(
            self._run_name,
            log_root=self._log_path if self._enable_file_logging else None,
            runs_root=self._run_path if self._enable_tensorboard else None,
        )
        if self._enable_compile:
            model.compile_networks()

    def _collective_device(self) -> torch.device | None:
        if not self._is_distributed:
            return None
        return torch.device("cpu") if self._use_cpu else self._device

    def _loop_options(self) -> LoopOptions:
        return LoopOptions(
            train_unit=self._train_unit,
            total_steps=self._total_steps,
            valid_frequency=self._valid_frequency,
            chkpt_frequency=self._chkpt_frequency,
            print_frequency=self._print_frequency,
            accumulation_steps=self._accumulation_steps,
            early_stop_cycles=self._early_stop_cycles,
            show_progress=self.shows_progress,
        )

    def _checkpoint_parts(
        self, state: TrainingState, fast_init: bool
    ) -> dict[str, checkpoints.CheckpointPart]:
        """Every shared part of this run's checkpoints, in restore order."""
        return {
            "logs": self._run_logs,
            "model": _ModelPart(self.model, fast_init),
            "running_losses": _RunningLosses(self.model),
            "precision": self._precision,
            **self._plugins,
            "training_state": state,
            "preemption": self._preemption,
            "loggers": self._logger_states,
            "run_end": self._run_end,
            "checkpoint_retention": self._retention,
        }

    def _run_checkpoint(self, state: TrainingState, fast_init: bool) -> checkpoints.RunCheckpoint:
        model = self.model
        folder = self._chkpt_root / model.save_name if self._chkpt_root is not None else None
        self._retention = CheckpointRetention(self._retention_policy, folder, lambda: model.metrics)
        return checkpoints.RunCheckpoint(
            folder,
            self._checkpoint_parts(state, fast_init),
            checkpoints.RankState(
                state,
                rank=self._rank,
                world_size=torch.distributed.get_world_size() if self._is_distributed else 1,
                seed=get_from_optional(self._random_seed),
            ),
            name=lambda at: model.append_metadata_to_chkpt_name(
                checkpoints.checkpoint_name(model.save_name, at)
            ),
            rank=self._rank,
            is_distributed=self._is_distributed,
            map_location=self._map_loc,
            retention=self._retention,
            asynchronous=self._chkpt_async,
        )

    def _train(self) -> None:
        lock = self._claim_checkpoint_folder()
        try:
            self._train_in_folder()
        finally:
            if lock is not None:
                lock.release()

    def _claim_checkpoint_folder(self) -> RunFolderLock | None:
        """Make rank 0 the only writer of the checkpoint folder, before anything trains.

        Every rank learns whether rank 0 got it, so no rank trains alone.
        """
        if self._chkpt_root is None:
            return None
        lock = None
        error: CheckpointFolderError | None = None
        if self._rank == 0:
            lock = RunFolderLock(self._chkpt_root / self.model.save_name)
            try:
                lock.acquire()
            except CheckpointFolderError as refused:
                error = refused
        if agree_any(error is not None, self._collective_device()):
            if lock is not None:
                lock.release()
            raise error or CheckpointFolderError(
                "error: rank 0 could not claim the checkpoint folder (its log names the reason)"
            )
        return lock

    def _training_loop(self, hooks: Hooks, checkpoint: checkpoints.RunCheckpoint) -> TrainingLoop:
        """Build the training loop of a run, with what it reports and what it guards."""
        report = RunReport(
            self.model,
            self._loggers if self._rank == 0 else [],
            show=self._rank == 0 and self._print_summaries,
            defer_epoch_times=self._train_unit == TrainingUnit.ITERATION,
        )
        guard = None
        if self._nonfinite_guard:
            scaled = self._precision.scaler is not None
            guard = NonFiniteGuard(self.model, hooks.collective_device, check_losses=not scaled)
            checkpoint.check = guard.model_state_error
        return TrainingLoop(
            self._loop_options(), hooks, self.datamodule, checkpoint.save,
            checkpoint.rank_state, self._preemption, report, self._run_end, guard,
        )  # fmt: skip

    def _train_in_folder(self) -> None:
        self._setup(fast_init=False)
        self._preemption = Preemption(self._collective_device())
        self._run_end = RunEnd()
        state = TrainingState()
        self._logger_states = LoggerStates(self._loggers, state)
        checkpoint = self._run_checkpoint(state, fast_init=False)
        checkpoint.prepare_folder()
        register_model_types_for_safe_load(self.model)
        path = checkpoint.resume()
        finished = finished_message(
            self._run_end, state, self._train_unit, self._total_steps,
            self._preemption.unit_end_pending,
        )  # fmt: skip
        # Training again from the checkpoint: what was logged after it is logged again.
        self._run_logs.open(purge=finished is None)
        if path is not None:
            message = f"Resuming training from checkpoint {path}"
            self.root_logger.info(message)
            self._print_header(log_banner=False)
            dist.global_print(message + "\n")
        else:
            self._print_header(log_banner=True)
        if finished is not None:
            self.root_logger.info(finished)
            dist.global_print(finished)
            logging.flush_default_loggers()
            dist.safe_barrier()
            return

        self._logger_states.resume_from_checkpoint_step()
        world_size = torch.distributed.get_world_size() if self._is_distributed else 1
        self.root_logger.info(
            run_summary(self.model, self._device, self._precision.name, world_size)
        )
        hooks = Hooks(self.model, list(self._plugins.values()), self._collective_device())
        loop = self._training_loop(hooks, checkpoint)
        with self._preemption.handling_signals():
            hooks.call_plugins("on_training_start")
            self.model.on_training_start()
            try:
                loop.run(state)
            except BaseException:
                checkpoint.close(raise_errors=False)
                raise
            checkpoint.close()
            self._preemption.settle()
        hooks.call_plugins("on_training_end")
        self.model.on_training_end()
        logging.flush_default_loggers()
        dist.safe_barrier()

    def _test(self) -> None:
        self._setup(fast_init=True)
        register_model_types_for_safe_load(self.model)
        path = self._run_checkpoint(TrainingState(), fast_init=True).resume()
        self._run_logs.open_new()
        if path is not None:
            message = f"Testing using checkpoint {path}"
        else:
            self.model.load_for_testing()
            message = "Testing from loaded model"
        self.root_logger.info(get_env_info_str())
        self.root_logger.info(message)
        if self._print_banner:
            dist.global_print(self.model.append_to_banner(get_env_info_str()))
        dist.global_print(message + "\n")

        test = self.datamodule.test_dataloader()
        if test is None:
            self.root_logger.warning(
                "error: the datamodule has no test split; test() ran no batches"
            )
            return
        hooks = Hooks(self.model, list(self._plugins.values()), self._collective_device())
        EvaluationLoop(hooks, self.shows_progress).test(test[0])
        logging.flush_default_loggers()
        dist.safe_barrier()

    def _print_header(self, log_banner: bool) -> None:
        banner = self.model.append_to_banner(get_env_info_str())
        if self._print_banner:
            dist.global_print(banner)
            if log_banner:
                self.root_logger.info(banner)


class _RunningLosses:
    """The model's running loss sums since the last validation (what the loggers average)."""

    def __init__(self, model: Model) -> None:
        self._model = model

    def state_dict(self) -> dict[str, Any] | None:
        sums = self._model._running_losses
        return {key: torch.as_tensor(value).clone() for key, value in sums.items()} or None

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._model._running_losses.clear()
        self._model._running_losses.update(state_dict)


class _ModelPart:
    """The model's part of a checkpoint (its ``load_state_dict`` also takes ``fast_init``)."""

    def __init__(self, model: Model, fast_init: bool) -> None:
        self._model = model
        self._fast_init = fast_init

    def state_dict(self) -> dict[str, Any]:
        return self._model.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._model.load_state_dict(state_dict, fast_init=self._fast_init)

    @property
    def is_sharded(self) -> bool:
        """Whether a network of the model is sharded (its checkpoint entry is shards)."""
        found, _ = default_state.find_state(self._model)
        return any(
            isinstance(obj, torch.nn.Module) and sharding.is_sharded_network(obj)
            for obj in found.values()
        )

    def prepare_to_load(self) -> None:
        """Give the model's optimizers the state tensors to load saved shards into."""
        found, _ = default_state.find_state(self._model)
        for obj in found.values():
            if isinstance(obj, torch.optim.Optimizer):
                sharding.initialize_optimizer_state(obj)


def _log_uncaught(error: BaseException, mode: _Mode) -> None:
    """Show an unlisted exception on stderr (traceback and summary) and in the log file."""
    rank = dist.get_global_rank() if dist.is_dist_active() else None
    text = failures.report_failure(error, mode.value, rank)
    if logging.is_root_logger_active():
        logging.get_root_logger().log_to_file(_std_logging.ERROR, text.rstrip("\n"))


def _spawned_worker(
    rank: int,
    world_size: int,
    port: int,
    result_queue: Any,
    error_queue: Any,
    trainer: Trainer,
    model: Model,
    datamodule: DataModule,
    mode: _Mode,
) -> None:
    """Body of one spawned rank: join the group, run, and report failures to the parent.

    On a failure the rank reports it, destroys the group and exits with an error, which
    makes the parent terminate the other ranks.
    """
    report = launch.ErrorReporter(rank, error_queue, trainer._listed_exceptions(mode), mode.value)
    succeeded = False
    try:
        trainer.local_rank = rank
        dist.init_dist(
            backend="gloo" if trainer.uses_cpu else "nccl",
            rank=rank,
            world_size=world_size,
            master_port=port,
            device=None if trainer.uses_cpu else trainer.device,
        )
        launch.release_group_at_exit()
        trainer.rank = rank
        trainer.queue = result_queue
        trainer.model, trainer.datamodule = model, datamodule
        succeeded = trainer._run_in_process(mode, report)
    except BaseException as error:
        report(error)
        raise
    finally:
        if succeeded:
            dist.shutdown_dist()
        else:
            launch.abandon_process_group()
    if not succeeded:
        raise launch.DistributedRunError(f"error: rank {rank} failed")


__all__ = ["Trainer"]
