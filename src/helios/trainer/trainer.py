"""The Trainer: its arguments checked into a frozen configuration; ``fit``/``test``."""

from __future__ import annotations

import contextlib
import datetime
import pathlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch

import helios.trainer.launch as launch
from helios.core import logging
from helios.core.precision import Precision
from helios.core.training_state import TrainingUnit
from helios.core.utils import get_from_optional
from helios.plugins.plugin import validate_plugins

from .checkpoint.parts import (
    PartTable,
    StateOwner,
    add_extra_parts,
    check_part_name,
    extra_part_owner,
)
from .config import build_config
from .failures import log_uncaught
from .run import FitRun, Job, Run, TestRun

if TYPE_CHECKING:
    import torch.multiprocessing as mp

    from helios.data import DataModule
    from helios.loggers import ExperimentLogger
    from helios.model import Model
    from helios.plugins import Plugin


class Trainer:
    """Runs training, validation and testing of a Model on a DataModule.

    The Trainer sets up the environment (seeds, determinism, devices, logging, distributed
    processes), runs the loops (see :py:mod:`helios.trainer.loops` for the exact call order),
    saves checkpoints atomically and resumes exactly from the newest one.

    The constructor checks every argument (naming the argument, the value and what is
    allowed) into a frozen run configuration; ``fit`` and ``test`` build a run from it
    (:py:mod:`helios.trainer.run`) and launch it (:py:mod:`helios.trainer.launch`). The
    properties read the configuration, or the current (or last) run of this process.

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
        random_seed: seed for every RNG (defaults to :py:func:`helios.core.rng.get_default_seed`),
            the loaders' shuffling included: a split whose ``DataLoaderParams`` keep the
            default ``random_seed`` is shuffled by this seed
            (:py:attr:`helios.data.DataModule.run_seed`).
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
            :py:mod:`helios.trainer.checkpoint.retention`.
        chkpt_keep_best: also keep the this many checkpoints with the best
            ``chkpt_best_metric``.
        chkpt_best_metric: key of the model's ``metrics`` table that ranks checkpoints;
            with it the folder gets an index naming the best one
            (:py:func:`~helios.trainer.find_best_checkpoint`).
        chkpt_best_mode: ``"max"`` (higher is better) or ``"min"``.
        chkpt_async: write checkpoints in a background thread after copying the state
            synchronously (see :py:mod:`helios.trainer.checkpoint.async_save`).
        nonfinite_guard: stop training on a NaN/inf loss or model state and never save it
            (see :py:mod:`helios.trainer.nonfinite` for what is checked when).
        print_summaries: print one line after each validation (the model's ``metrics`` and
            the running losses) and one when training ends, on rank 0; the log file gets
            them either way.
        dist_timeout: how long a rank waits for the others in any collective (the gradient
            sync, a checkpoint's agreement) and in the process group's store before it
            fails with an error: seconds or a ``datetime.timedelta``. ``None`` takes the
            ``HELIOS_DIST_TIMEOUT`` environment variable (seconds), else torch's default
            (30 minutes on gloo, 10 on NCCL). It bounds how long the survivors of a dead or
            cut-off node wait; it applies to the process group helios creates (under
            ``torchrun`` or spawned), not to one the script initialised itself. Added in
            Helios 1.3.0.

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
        dist_timeout: float | datetime.timedelta | None = None,
    ) -> None:
        arguments = dict(locals())
        del arguments["self"]
        self._config = build_config(arguments)
        self._local_rank = 0
        self._rank = 0
        self._model: Model | None = None
        self._datamodule: DataModule | None = None
        self._queue: mp.Queue | None = None
        self._train_exceptions: list[type[Exception]] = []
        self._test_exceptions: list[type[Exception]] = []
        self._plugins: dict[str, Plugin] = {}
        self._extra_parts: dict[str, StateOwner] = {}
        self._run: Run | None = None

    # -- the current run ------------------------------------------------------------------

    def _context(self) -> launch.RunContext | None:
        """The context of this process's current (or last) run, if it joined one."""
        return self._run.context if self._run is not None else None

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
        """The rank of this process on its node (its GPU index into ``gpu_ids``).

        During and after a run, the run's; setting it outside a run picks the GPU that
        :py:attr:`device` names.
        """
        context = self._context()
        return context.local_rank if context is not None else self._local_rank

    @local_rank.setter
    def local_rank(self, rank: int) -> None:
        self._config.device_for(rank)  # raises for a rank without a GPU
        self._local_rank = rank

    @property
    def rank(self) -> int:
        """The global rank of this process (during and after a run, the run's)."""
        context = self._context()
        return context.global_rank if context is not None else self._rank

    @rank.setter
    def rank(self, rank: int) -> None:
        self._rank = rank

    @property
    def gpu_ids(self) -> list[int]:
        """The ids of the GPUs used for training (empty on the CPU)."""
        return list(self._config.gpu_ids)

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
        context = self._context()
        if context is not None and context.results is not None:
            return context.results
        return self._queue

    @queue.setter
    def queue(self, queue: mp.Queue | None) -> None:
        self._queue = queue

    @property
    def train_unit(self) -> TrainingUnit:
        """The training unit."""
        return self._config.train_unit

    @property
    def total_steps(self) -> int | float:
        """The number of epochs or iterations to train for."""
        return self._config.total_steps

    @property
    def valid_frequency(self) -> int | None:
        """Validation frequency, in training units."""
        return self._config.valid_frequency

    @property
    def chkpt_frequency(self) -> int | None:
        """Checkpoint frequency, in training units."""
        return self._config.chkpt_frequency

    @property
    def print_frequency(self) -> int | None:
        """Logging frequency, in iterations."""
        return self._config.print_frequency

    @property
    def accumulation_steps(self) -> int:
        """Batches per iteration."""
        return self._config.accumulation_steps

    @property
    def early_stop_cycles(self) -> int | None:
        """Validation cycles without improvement after which training stops."""
        return self._config.early_stop_cycles

    @property
    def is_distributed(self) -> bool:
        """Whether the run uses several processes."""
        return self._config.is_distributed

    @property
    def uses_cpu(self) -> bool:
        """Whether the run is on the CPU."""
        return self._config.use_cpu

    @property
    def device(self) -> torch.device:
        """The device of this process."""
        context = self._context()
        return context.device if context is not None else self._config.device_for(self._local_rank)

    @property
    def _map_loc(self) -> dict[str, str]:
        """Where this process maps the tensors of loaded checkpoints."""
        return self._config.map_location_for(self.local_rank)

    @property
    def shows_progress(self) -> bool:
        """Whether this process shows progress bars (rank 0, when enabled)."""
        return bool(self._config.enable_progress_bar) and self.rank == 0

    @property
    def precision(self) -> Precision:
        """The precision of the current run (autocast settings and gradient scaler)."""
        return self._run.precision if self._run is not None else _NO_RUN_PRECISION

    @property
    def root_logger(self) -> logging.RootLogger:
        """The root logger of the current run."""
        return logging.get_root_logger()

    # -- checkpoint parts -----------------------------------------------------------------

    def add_checkpoint_part(self, name: str, part: StateOwner) -> None:
        """Save an object's state in every checkpoint of this trainer's runs, under ``name``.

        ``part.state_dict()`` is saved by rank 0 in every checkpoint (nothing when it
        returns ``None``), and on resume every rank's ``part.load_state_dict()`` gets the
        saved entry, after the model and the plug-ins and before the training state (see
        :py:mod:`helios.trainer.checkpoint.parts`). A front end uses it for what it must
        find again in a checkpoint (a resolved configuration, the records of a run);
        :py:func:`helios.trainer.checkpoint.read_checkpoint` reads it back without a model.

        Args:
            name: the part's key in the checkpoint.
            part: an object with ``state_dict()`` and ``load_state_dict(state_dict)``.

        Raises:
            TypeError: if ``name`` is not a string or ``part`` lacks the two methods.
            ValueError: if ``name`` is empty, one of helios's own keys (``model``,
                ``training_state``, ...), or already taken by another extra part.
        """
        owner = extra_part_owner(name, part)
        taken = {
            key: f"another extra part ({type(value).__name__})"
            for key, value in self._extra_parts.items()
        }
        check_part_name(name, owner, taken)
        if not isinstance(part, StateOwner):
            raise TypeError(
                f"{owner} must have state_dict() and load_state_dict(state_dict) methods"
            )
        self._extra_parts[name] = part

    @property
    def checkpoint_parts(self) -> dict[str, StateOwner]:
        """The extra checkpoint parts by name (:py:meth:`add_checkpoint_part`); a copy."""
        return dict(self._extra_parts)

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
            ValueError: if ``total_steps`` is 0, which leaves nothing to train, or a
                plug-in id or extra part takes a name helios keeps its own state under.
        """
        if self._config.total_steps == 0:
            raise ValueError(
                "fit() with total_steps=0 has nothing to train; pass total_steps (the "
                f"number of {self._config.train_unit.name.lower()}s) to the Trainer"
            )
        run = self._new_run(FitRun, model, datamodule, self._train_exceptions)
        with self._failures_shown(run):
            return self._launched(launch.launch(run))
        return False

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
            ValueError: if a plug-in id or extra part takes a name helios keeps its own
                state under.
        """
        run = self._new_run(TestRun, model, datamodule, self._test_exceptions)
        with self._failures_shown(run):
            return self._launched(launch.launch(run))
        return False

    def _new_run(
        self,
        kind: type[Run],
        model: Model,
        datamodule: DataModule,
        listed: list[type[Exception]],
    ) -> Run:
        """Check what ``fit``/``test`` was given and build its run (the current run)."""
        from helios.data import DataModule
        from helios.model import Model

        for name, value, expected, path in (
            ("model", model, Model, "helios.model.Model"),
            ("datamodule", datamodule, DataModule, "helios.data.DataModule"),
        ):
            if not isinstance(value, expected):
                raise TypeError(
                    f"{kind.action}() expects a {path} as {name}, but received "
                    f"{type(value).__name__}"
                )
        validate_plugins(self._plugins)
        add_extra_parts(PartTable(), self._plugins, self._extra_parts)  # refuses bad names
        self._model, self._datamodule = model, datamodule
        job = Job(
            self, model, datamodule, dict(self._plugins), dict(self._extra_parts), tuple(listed)
        )
        self._run = kind(self._config, job)
        return self._run

    @contextlib.contextmanager
    def _failures_shown(self, run: Run) -> Iterator[None]:
        """Show a failure of the launch (``fit`` then returns False); re-raise listed ones."""
        try:
            yield
        except Exception as error:
            if isinstance(error, (*run.listed_exceptions(), launch.DistributedRunError)):
                raise
            log_uncaught(error, run.action)

    def _launched(self, outcome: tuple[bool, Any]) -> bool:
        succeeded, results = outcome
        if results is not None:
            self._queue = results
        return succeeded


_NO_RUN_PRECISION = Precision()


__all__ = ["Trainer"]
