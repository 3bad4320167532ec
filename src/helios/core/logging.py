"""The default loggers of a run: a root text logger and a TensorBoard writer.

The :py:class:`RootLogger` prints warnings and errors to stdout and, once set up, writes
INFO and above to a log file. The :py:class:`TensorboardWriter` wraps
:py:class:`torch.utils.tensorboard.SummaryWriter`. Both only log on global rank 0 (other
ranks only report errors). The module keeps one active instance of each, created with
:py:func:`create_default_loggers` and released with :py:func:`close_default_loggers`.
"""

from __future__ import annotations

import contextlib
import copy
import logging as _logging
import pathlib
import sys
from collections.abc import Iterator
from datetime import datetime
from typing import IO, TYPE_CHECKING, Any

import torch
from torch import nn

import helios.core.distributed as dist
from helios.core.utils import get_from_optional

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from torch.utils.tensorboard import SummaryWriter

_LOGGER_NAME = "helios"
_FORMAT = "[%(asctime)s] [%(levelname)s]: %(message)s"

_ACTIVE_LOGGERS: dict[str, RootLogger | TensorboardWriter] = {}
_WARNINGS_LOGGER_NAME = "py.warnings"


class _ForwardHandler(_logging.Handler):
    """Pass records to another logger, subject to that logger's level (rank gating)."""

    def __init__(self, target: _logging.Logger) -> None:
        super().__init__()
        self._target = target

    def emit(self, record: _logging.LogRecord) -> None:
        if self._target.isEnabledFor(record.levelno):
            self._target.handle(record)


def _is_capturing_warnings() -> bool:
    """Whether :py:func:`logging.captureWarnings` is currently on."""
    return getattr(_logging, "_warnings_showwarning", None) is not None


def _report_to_stderr(line: str) -> None:
    """Write one line to stderr, ignoring a broken stderr (nothing is left to tell then)."""
    try:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    except Exception:
        pass


class _SafeHandlerMixin:
    """Makes a handler's failures to write harmless: they are reported once, then ignored.

    The standard handlers print a "--- Logging error ---" traceback for every record they
    cannot write (a full disk, a closed stream), and their ``flush``/``close`` raise, which
    would make a complete training run fail at its end. A safe handler reports the first
    failure on stderr in one line, ignores the following ones (it keeps trying, so logging
    resumes if space frees up) and never raises.
    """

    _failed = False

    def _report_failure(self, error: BaseException | None) -> None:
        if self._failed:
            return
        self._failed = True
        target = getattr(self, "baseFilename", None) or "stdout"
        reason = f"{type(error).__name__}: {error}" if error is not None else "unknown error"
        _report_to_stderr(
            f"helios warning: cannot write the log to {target} ({reason}); training goes on, "
            "and further log errors are not shown"
        )

    def handleError(self, record: _logging.LogRecord) -> None:  # noqa: N802
        """Report the first failure to write a record; ignore the others."""
        self._report_failure(sys.exc_info()[1])

    def flush(self) -> None:
        """Flush, reporting (once) instead of raising a failure."""
        try:
            super().flush()  # type: ignore[misc]
        except (OSError, ValueError) as error:
            self._report_failure(error)

    def close(self) -> None:
        """Close, reporting (once) instead of raising a failure."""
        try:
            super().close()  # type: ignore[misc]
        except (OSError, ValueError) as error:
            self._report_failure(error)


class _SafeFileHandler(_SafeHandlerMixin, _logging.FileHandler):
    """File handler whose write failures are reported once and never raised."""


class _StdoutHandler(_SafeHandlerMixin, _logging.StreamHandler):
    """Stream handler that writes to whatever ``sys.stdout`` is at emit time."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property
    def stream(self) -> IO[str]:
        return sys.stdout

    @stream.setter
    def stream(self, value: IO[str]) -> None:
        # The stream is always the current sys.stdout (so redirection and capture work).
        pass


class RootLogger:
    """Text logger of a run, built on the stdlib logger named ``"helios"``.

    Warnings and errors are printed to stdout from construction; after :py:meth:`setup`
    INFO and above also go to a file. Only global rank 0 logs INFO and warnings; other ranks
    only log errors. :py:meth:`close` removes the handlers again, so consecutive runs in one
    process never share files or print twice.

    With ``capture_warnings`` (added in Helios 1.3.0), Python warnings
    (:py:func:`warnings.warn`) are routed into this logger, so they reach the run's log
    file, through :py:func:`logging.captureWarnings`, until :py:meth:`close`. They are then
    no longer printed by the :py:mod:`warnings` module itself; the console still shows them
    through this logger's stdout handler (on rank 0).

    Args:
        capture_warnings: route Python warnings into this logger while it is open.
    """

    def __init__(self, capture_warnings: bool = False) -> None:
        self._rank = dist.get_global_rank()
        self._logger = _logging.getLogger(_LOGGER_NAME)
        self._logger.propagate = False
        self._logger.setLevel(_logging.INFO if self._rank == 0 else _logging.ERROR)
        self._formatter = _logging.Formatter(_FORMAT)
        self._handlers: list[_logging.Handler] = []
        self._file_handler: _SafeFileHandler | None = None
        self._log_file: pathlib.Path | None = None

        stream_handler = _StdoutHandler()
        stream_handler.setLevel(_logging.WARNING)
        self._add_handler(stream_handler)

        self._warnings_handler: _ForwardHandler | None = None
        self._started_capture = False
        if capture_warnings:
            self._start_capturing_warnings()

    def _start_capturing_warnings(self) -> None:
        self._started_capture = not _is_capturing_warnings()
        if self._started_capture:
            _logging.captureWarnings(True)
        self._warnings_handler = _ForwardHandler(self._logger)
        _logging.getLogger(_WARNINGS_LOGGER_NAME).addHandler(self._warnings_handler)

    def _stop_capturing_warnings(self) -> None:
        if self._warnings_handler is not None:
            _logging.getLogger(_WARNINGS_LOGGER_NAME).removeHandler(self._warnings_handler)
            self._warnings_handler = None
        if self._started_capture:
            _logging.captureWarnings(False)
            self._started_capture = False

    @property
    def captures_warnings(self) -> bool:
        """Whether Python warnings are being routed into this logger."""
        return self._warnings_handler is not None

    def _add_handler(self, handler: _logging.Handler) -> None:
        handler.setFormatter(self._formatter)
        self._logger.addHandler(handler)
        self._handlers.append(handler)

    def _remove_handler(self, handler: _logging.Handler) -> None:
        handler.flush()
        handler.close()
        self._logger.removeHandler(handler)
        self._handlers.remove(handler)

    def setup(self, log_file: pathlib.Path | None = None) -> None:
        """Start writing INFO and above to a file (appending if it exists).

        Calling it again switches to the new file.

        Args:
            log_file: the log file; ``None`` does nothing. Its folder is created if needed.
        """
        if log_file is None:
            return
        log_file = pathlib.Path(log_file)
        if self._file_handler is not None:
            self._remove_handler(self._file_handler)
            self._file_handler = None
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = _SafeFileHandler(log_file, mode="a", encoding="utf-8")
        handler.setLevel(_logging.INFO)
        self._add_handler(handler)
        self._file_handler = handler
        self._log_file = log_file

    @property
    def logger(self) -> _logging.Logger:
        """The underlying stdlib logger."""
        return self._logger

    @property
    def log_file(self) -> pathlib.Path | None:
        """The log file, or ``None`` if :py:meth:`setup` was not given one."""
        return self._log_file

    def info(self, msg: str, **kwargs: Any) -> None:
        """Log an INFO message (global rank 0 only).

        Args:
            msg: the message.
            **kwargs: keyword arguments for :py:meth:`logging.Logger.info`.
        """
        if self._rank == 0:
            self._logger.info(msg, **kwargs)

    def warning(self, msg: str, **kwargs: Any) -> None:
        """Log a warning (shown on global rank 0 only).

        Args:
            msg: the message.
            **kwargs: keyword arguments for :py:meth:`logging.Logger.warning`.
        """
        self._logger.warning(msg, **kwargs)

    def error(self, msg: str, **kwargs: Any) -> None:
        """Log an error (on every rank).

        Args:
            msg: the message.
            **kwargs: keyword arguments for :py:meth:`logging.Logger.error`.
        """
        self._logger.error(msg, **kwargs)

    def exception(self, msg: str, **kwargs: Any) -> None:
        """Log an error with the traceback of the exception being handled.

        Args:
            msg: the message.
            **kwargs: keyword arguments for :py:meth:`logging.Logger.exception`.
        """
        self._logger.exception(msg, **kwargs)

    def log_to_file(self, level: int, msg: str) -> None:
        """Write a message to the log file only (not to stdout), if there is a file.

        Args:
            level: the level (``logging.ERROR``, ...).
            msg: the message.
        """
        if self._file_handler is None or not self._logger.isEnabledFor(level):
            return
        record = self._logger.makeRecord(self._logger.name, level, "(helios)", 0, msg, (), None)
        self._file_handler.handle(record)

    def flush(self) -> None:
        """Flush every handler."""
        for handler in self._handlers:
            handler.flush()

    def close(self) -> None:
        """Flush, close and remove every handler this logger added; stop capturing warnings."""
        self._stop_capturing_warnings()
        for handler in list(self._handlers):
            self._remove_handler(handler)
        self._file_handler = None


class TensorboardWriter:
    """Wrapper around :py:class:`torch.utils.tensorboard.SummaryWriter`.

    Only global rank 0 creates a writer (in :py:meth:`setup`); before that, and on other
    ranks, every method is a no-op. When the event file cannot be written (a full disk),
    TensorBoard's writer thread dies and every later call would raise; instead the first
    failure is reported once on stderr and the writer is dropped, so training goes on.
    """

    def __init__(self) -> None:
        self._rank = dist.get_global_rank()
        self._writer: SummaryWriter | None = None
        self._run_path: pathlib.Path | None = None

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Turn a failure to write the event file into one report and a dropped writer."""
        try:
            yield
        except OSError as error:
            self._writer = None
            _report_to_stderr(
                f"helios warning: cannot write the TensorBoard run to {self._run_path} "
                f"({type(error).__name__}: {error}); training goes on without TensorBoard"
            )

    def setup(self, run_path: pathlib.Path) -> None:
        """Create the summary writer for a run folder (global rank 0 only).

        Args:
            run_path: the folder the event files are written to.

        Raises:
            ImportError: if tensorboard is not installed.
        """
        if self._rank != 0:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise ImportError(
                'TensorBoard logging needs tensorboard: pip install "tensorboard"'
            ) from exc
        if self._writer is not None:
            with self._writing():
                self._writer.close()
        self._run_path = pathlib.Path(run_path)
        self._writer = SummaryWriter(log_dir=str(run_path), flush_secs=20)

    @property
    def run_path(self) -> pathlib.Path:
        """The run folder given to :py:meth:`setup` (AssertionError if not set up)."""
        return get_from_optional(self._run_path)

    def add_scalar(
        self,
        tag: str,
        scalar_value: float | str | torch.Tensor,
        global_step: int | None = None,
    ) -> None:
        """Add a scalar.

        Args:
            tag: the data identifier.
            scalar_value: the value.
            global_step: the step.
        """
        if self._writer is not None:
            with self._writing():
                self._writer.add_scalar(tag, scalar_value, global_step, new_style=True)

    def add_scalars(
        self,
        main_tag: str,
        tag_scalar_dict: dict[str, float | torch.Tensor],
        global_step: int | None = None,
    ) -> None:
        """Add several scalars under a common main tag.

        Args:
            main_tag: the parent tag.
            tag_scalar_dict: the values by sub-tag.
            global_step: the step.
        """
        if self._writer is not None:
            with self._writing():
                self._writer.add_scalars(main_tag, tag_scalar_dict, global_step)

    def add_image(
        self,
        tag: str,
        img_tensor: torch.Tensor | Any,
        global_step: int | None = None,
        dataformats: str = "CHW",
    ) -> None:
        """Add an image.

        Args:
            tag: the data identifier.
            img_tensor: the image (tensor or numpy array).
            global_step: the step.
            dataformats: the layout of ``img_tensor``.
        """
        if self._writer is not None:
            with self._writing():
                self._writer.add_image(tag, img_tensor, global_step, dataformats=dataformats)

    def add_images(
        self,
        tag: str,
        img_tensor: torch.Tensor | Any,
        global_step: int | None = None,
        dataformats: str = "NCHW",
    ) -> None:
        """Add a batch of images.

        Args:
            tag: the data identifier.
            img_tensor: the images (tensor or numpy array).
            global_step: the step.
            dataformats: the layout of ``img_tensor``.
        """
        if self._writer is not None:
            with self._writing():
                self._writer.add_images(tag, img_tensor, global_step, dataformats=dataformats)

    def add_figure(
        self,
        tag: str,
        figure: Figure | list[Figure],
        global_step: int | None = None,
        close: bool = True,
    ) -> None:
        """Render a matplotlib figure (or list of figures) into an image.

        Args:
            tag: the data identifier.
            figure: the figure(s).
            global_step: the step.
            close: close the figure(s) afterwards.
        """
        if self._writer is not None:
            with self._writing():
                self._writer.add_figure(tag, figure, global_step, close=close)

    def add_text(self, tag: str, text_string: str, global_step: int | None = None) -> None:
        """Add text.

        Args:
            tag: the data identifier.
            text_string: the text.
            global_step: the step.
        """
        if self._writer is not None:
            with self._writing():
                self._writer.add_text(tag, text_string, global_step)

    def add_graph(
        self,
        model: nn.Module,
        input_to_model: torch.Tensor | list[torch.Tensor] | None = None,
        verbose: bool = False,
        use_strict_trace: bool = True,
    ) -> None:
        """Trace a model and add its graph.

        The model is deep-copied to the CPU and the inputs moved to the CPU first, so the
        caller's model and device are left alone.

        Args:
            model: the model.
            input_to_model: the input(s) for the trace.
            verbose: print the graph.
            use_strict_trace: passed to :py:func:`torch.jit.trace`.

        Raises:
            TypeError: if ``input_to_model`` is not a tensor, a list/tuple of tensors or
                ``None``.
        """
        inputs: torch.Tensor | list[torch.Tensor] | None
        if input_to_model is None:
            inputs = None
        elif isinstance(input_to_model, torch.Tensor):
            inputs = input_to_model.cpu()
        elif isinstance(input_to_model, list | tuple) and all(
            isinstance(t, torch.Tensor) for t in input_to_model
        ):
            inputs = [t.cpu() for t in input_to_model]
        else:
            raise TypeError(
                "input_to_model must be a tensor, a list of tensors or None, got "
                f"{type(input_to_model).__name__}"
            )
        if self._writer is None:
            return
        cpu_model = copy.deepcopy(model).cpu()
        with self._writing():
            self._writer.add_graph(cpu_model, inputs, verbose, use_strict_trace)

    def add_pr_curve(
        self,
        tag: str,
        labels: torch.Tensor | Any,
        predictions: torch.Tensor | Any,
        global_step: int | None = None,
        num_thresholds: int = 127,
    ) -> None:
        """Add a precision-recall curve.

        Args:
            tag: the data identifier.
            labels: the ground-truth labels (0/1).
            predictions: the predicted probabilities.
            global_step: the step.
            num_thresholds: the number of thresholds of the curve.
        """
        if self._writer is not None:
            with self._writing():
                self._writer.add_pr_curve(
                    tag, labels, predictions, global_step, num_thresholds=num_thresholds
                )

    def add_hparams(
        self,
        hparam_dict: dict[str, Any],
        metric_dict: dict[str, Any],
        hparam_domain_discrete: dict[str, list[Any]] | None = None,
        run_name: str | None = None,
        global_step: int | None = None,
    ) -> None:
        """Add hyper-parameters and the metrics they produced.

        Args:
            hparam_dict: the hyper-parameters.
            metric_dict: the metrics.
            hparam_domain_discrete: the possible values of discrete hyper-parameters.
            run_name: sub-folder of the run folder to write into; ``None`` writes into the
                run folder itself.
            global_step: the step.
        """
        if self._writer is not None:
            with self._writing():
                self._writer.add_hparams(
                    hparam_dict,
                    metric_dict,
                    hparam_domain_discrete,
                    run_name="." if run_name is None else run_name,
                    global_step=global_step,
                )

    def flush(self) -> None:
        """Write pending events to disk."""
        if self._writer is not None:
            with self._writing():
                self._writer.flush()

    def close(self) -> None:
        """Flush and close the writer."""
        if self._writer is not None:
            with self._writing():
                self._writer.close()
        self._writer = None


def get_default_log_name(run_name: str) -> str:
    """Return ``<run_name>_<MonDD>_<HH>-<MM>-<SS>`` for the current time.

    Args:
        run_name: the name of the run.

    Returns:
        The name, e.g. ``cifar10_Jun06_15-38-41``.
    """
    return run_name + "_" + datetime.now().strftime("%b%d_%H-%M-%S")


def create_default_loggers(enable_tensorboard: bool = True, capture_warnings: bool = False) -> None:
    """Create the root logger and, if enabled, the TensorBoard writer (if absent).

    Call it after the processes of a distributed run are started, so each knows its rank.

    Args:
        enable_tensorboard: also create the TensorBoard writer.
        capture_warnings: route Python warnings into the root logger until
            :py:func:`close_default_loggers` (added in Helios 1.3.0; see
            :py:class:`RootLogger`). If the root logger already exists, it starts capturing.
    """
    if "root" not in _ACTIVE_LOGGERS:
        _ACTIVE_LOGGERS["root"] = RootLogger(capture_warnings=capture_warnings)
    elif capture_warnings:
        root = get_root_logger()
        if not root.captures_warnings:
            root._start_capturing_warnings()
    if enable_tensorboard and "tensorboard" not in _ACTIVE_LOGGERS:
        _ACTIVE_LOGGERS["tensorboard"] = TensorboardWriter()


def restore_default_loggers(
    log_path: pathlib.Path | None = None, run_path: pathlib.Path | None = None
) -> None:
    """Point the active loggers at an existing log file / TensorBoard run folder.

    Args:
        log_path: the log file of the root logger (``None`` leaves it without a file).
        run_path: the run folder of the TensorBoard writer (ignored without a writer).

    Raises:
        RuntimeError: if :py:func:`create_default_loggers` was not called.
    """
    if "root" not in _ACTIVE_LOGGERS:
        raise RuntimeError(
            "the default loggers do not exist. Did you forget to call create_default_loggers?"
        )
    get_root_logger().setup(log_path)
    writer = get_tensorboard_writer()
    if writer is not None and run_path is not None:
        writer.setup(run_path)


def _pick_unique_base(
    run_name: str, log_root: pathlib.Path | None, runs_root: pathlib.Path | None
) -> str:
    base = get_default_log_name(run_name)

    def taken(name: str) -> bool:
        return (log_root is not None and (log_root / f"{name}.log").exists()) or (
            runs_root is not None and (runs_root / name).exists()
        )

    candidate = base
    index = 0
    while taken(candidate):
        index += 1
        candidate = f"{base}_{index}"
    return candidate


def setup_default_loggers(
    run_name: str,
    log_root: pathlib.Path | None = None,
    runs_root: pathlib.Path | None = None,
) -> None:
    """Set up the active loggers for a new run.

    The base name is :py:func:`get_default_log_name` of ``run_name``; if a log file or run
    folder with that name already exists (two runs in the same second), ``_1``, ``_2``, ...
    is appended. The log file is ``<log_root>/<base>.log`` and the TensorBoard folder
    ``<runs_root>/<base>``; both roots are created if needed. In a distributed run, rank 0
    picks the name and broadcasts it, so this is a collective call that every rank must
    make.

    Args:
        run_name: the name of the run.
        log_root: the folder of the log file (``None``: no log file).
        runs_root: the folder of the TensorBoard runs (``None``: no TensorBoard folder).

    Raises:
        RuntimeError: if :py:func:`create_default_loggers` was not called.
    """
    if "root" not in _ACTIVE_LOGGERS:
        raise RuntimeError(
            "the default loggers do not exist. Did you forget to call create_default_loggers?"
        )
    log_root = pathlib.Path(log_root) if log_root is not None else None
    runs_root = pathlib.Path(runs_root) if runs_root is not None else None
    base = ""
    if dist.get_global_rank() == 0:
        for root in (log_root, runs_root):
            if root is not None:
                root.mkdir(parents=True, exist_ok=True)
        base = _pick_unique_base(run_name, log_root, runs_root)
    base = dist.broadcast_object(base, src=0)

    restore_default_loggers(
        log_path=log_root / f"{base}.log" if log_root is not None else None,
        run_path=runs_root / base if runs_root is not None else None,
    )


def flush_default_loggers() -> None:
    """Flush every active logger."""
    for logger in _ACTIVE_LOGGERS.values():
        logger.flush()


def close_default_loggers() -> None:
    """Close every active logger and forget them."""
    for logger in _ACTIVE_LOGGERS.values():
        logger.close()
    _ACTIVE_LOGGERS.clear()


def get_root_logger() -> RootLogger:
    """Return the active root logger.

    Raises:
        KeyError: if :py:func:`create_default_loggers` was not called.
    """
    if "root" not in _ACTIVE_LOGGERS:
        raise KeyError(
            "the root logger does not exist. Did you forget to call create_default_loggers?"
        )
    logger = _ACTIVE_LOGGERS["root"]
    assert isinstance(logger, RootLogger)
    return logger


def is_root_logger_active() -> bool:
    """Return true if the root logger exists."""
    return "root" in _ACTIVE_LOGGERS


def get_tensorboard_writer() -> TensorboardWriter | None:
    """Return the active TensorBoard writer, or ``None`` if TensorBoard is disabled."""
    writer = _ACTIVE_LOGGERS.get("tensorboard")
    assert writer is None or isinstance(writer, TensorboardWriter)
    return writer
