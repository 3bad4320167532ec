"""Starting a run: in this process, under ``torchrun``, or spawned one process per GPU.

The Trainer hands over a run (:py:class:`helios.trainer.run.FitRun` or ``TestRun``) whose
``main`` is the whole ``fit``/``test`` body of one process; :py:func:`launch` decides where
it runs, and :py:func:`join` gives each process its :py:class:`RunContext`: its ranks, its
device and, when spawned, the channels back to the calling process.

* **One process, or torchrun.** :py:func:`launch` calls ``run.main()`` here. Under
  ``torchrun`` with several processes, :py:func:`join` first joins the process group that
  ``torchrun`` prepared (gloo on the CPU, NCCL on GPUs), once per process: later runs in the
  same process reuse it, because a group cannot be initialised again from ``torchrun``'s
  environment once destroyed. A group the script initialised itself is used as it is; either
  way the process ends when its ``torchrun`` agent dies (:py:func:`end_with_parent`) and the
  group is released at exit (:py:func:`release_group_at_exit`). If the body fails, the
  group is torn down (:py:func:`leave`). The other ranks' pending collectives then fail as
  soon as the failed process exits (which also makes ``torchrun`` stop the job); a script
  that carries on after a failed ``fit`` keeps them waiting, since a
  ``DistributedDataParallel`` model still holds the group's connections open.
* **Spawned.** :py:func:`launch` starts one process per GPU running ``run.main`` and waits
  for them. A rank that fails sends its exception and traceback to the calling process
  (see :py:class:`ErrorReporter`), which shows the traceback, re-raises the exception when
  its type is listed in ``train_exceptions``/``test_exceptions`` and otherwise returns
  False.
"""

from __future__ import annotations

import atexit
import ctypes
import dataclasses
import gc
import logging as _std_logging
import os
import pathlib
import pickle
import signal
import socket
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import torch
import torch.distributed
import torch.multiprocessing as mp

from helios.core import distributed as dist
from helios.core import logging

from .failures import failure_summary

if TYPE_CHECKING:
    from .config import RunConfig

# An error report (traceback text plus pickled exception) stays around this size, so that
# writing it into the pipe of the error queue (64 KiB) never blocks a failing rank: the
# parent reads the queue only after the ranks have exited.
_MAX_REPORT_BYTES = 48 * 1024

_joined_torchrun_group = False
_exit_hook_registered = False


class DistributedRunError(RuntimeError):
    """A rank of a spawned run failed with an exception that cannot be re-created here."""


def find_free_port() -> int:
    """Return a TCP port that is free on this machine right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("localhost", 0))
        return int(sock.getsockname()[1])


def format_exception(error: BaseException) -> str:
    """Return the full traceback of an exception as text."""
    return "".join(traceback.format_exception(type(error), error, error.__traceback__))


def use_spawn(config: Any) -> bool:
    """Return whether a run must spawn its own processes (several GPUs, no torchrun).

    Args:
        config: the run configuration (or the Trainer: anything with ``is_distributed``).
    """
    return bool(config.is_distributed) and not dist.is_using_torchrun()


def abandon_process_group() -> None:
    """Destroy the process group after a failure (no-op if none is active).

    Its connections close, and the other ranks' pending collectives fail, once nothing in
    this process holds the group any more, at the latest when the process exits. An NCCL
    group is aborted rather than destroyed: destroying waits for its pending work, which
    may never finish after a failure.
    """
    if not dist.is_dist_active():
        return
    abort = getattr(torch.distributed.distributed_c10d, "_abort_process_group", None)
    if torch.distributed.get_backend() == "nccl" and abort is not None:
        abort()
    else:
        dist.shutdown_dist()


def release_group_at_exit() -> None:
    """Make sure that the process group is gone before the interpreter shuts down.

    A gloo group that is still alive, or still held by some object, while the interpreter
    shuts down can abort the process ("terminate called without an active exception"), so
    that a run that succeeded ends with a failure status. The hook (registered once per
    process) first collects garbage, which frees the objects that usually hold the group by
    then (a ``DistributedDataParallel`` model in a reference cycle with its trainer), then
    destroys the group.
    """
    global _exit_hook_registered
    if not _exit_hook_registered:
        atexit.register(_release_group)
        _exit_hook_registered = True


def _release_group() -> None:
    gc.collect()
    dist.shutdown_dist()


def _join_torchrun_group(config: RunConfig, device: torch.device) -> None:
    global _joined_torchrun_group
    if dist.is_dist_active():
        # A group the script (or a library) initialised itself: helios uses it as it is,
        # but its workers still end with their agent and release the group at exit.
        end_with_parent()
        release_group_at_exit()
        return
    if _joined_torchrun_group:
        raise RuntimeError(
            "the torchrun process group of this process was torn down (after a failed "
            "run, or by a call to destroy_process_group) and cannot be joined again; start a "
            "new torchrun job"
        )
    end_with_parent()
    dist.init_dist(
        backend="gloo" if config.use_cpu else "nccl",
        device=None if config.use_cpu else device,
        timeout=config.dist_timeout,
    )
    _joined_torchrun_group = True
    release_group_at_exit()


def end_with_parent() -> None:
    """Have Linux send this process SIGTERM when its parent, ``torchrun``'s agent, dies.

    Without it, workers whose agent was killed train on as orphans and then hang at exit.
    With it they stop as on any SIGTERM: inside ``fit`` they save a checkpoint at the next
    iteration boundary and exit (see :py:mod:`helios.trainer.preemption`). Elsewhere this
    does nothing.
    """
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent:  # the agent died before the request was in place
        os.kill(os.getpid(), signal.SIGTERM)


@dataclasses.dataclass
class ErrorReport:
    """What a failed rank sends to the calling process.

    Args:
        global_rank: the rank that failed.
        traceback: the formatted traceback.
        listed: whether the exception's type is in the trainer's list for the current mode.
        log_path: the log file of the run, if file logging was enabled.
        pickled_error: the pickled exception, if it could be pickled.
        summary: the one-line summary naming the hook (see :py:mod:`helios.trainer.failures`).
    """

    global_rank: int
    traceback: str
    listed: bool = False
    log_path: pathlib.Path | None = None
    pickled_error: bytes | None = None
    summary: str | None = None

    def error(self) -> BaseException | None:
        """Return the exception, or ``None`` if it cannot be re-created in this process."""
        if self.pickled_error is None:
            return None
        try:
            error = pickle.loads(self.pickled_error)
        except Exception:
            return None
        return error if isinstance(error, BaseException) else None


class ErrorReporter:
    """Sends the first exception of a spawned rank to the calling process.

    Args:
        global_rank: the rank of this process.
        error_queue: the queue read by :py:func:`launch`.
        listed: the exception types that the Trainer re-raises for the current mode.
        action: what runs (``"fit"`` or ``"test"``), for the summary line.
    """

    def __init__(
        self,
        global_rank: int,
        error_queue: Any,
        listed: Sequence[type[Exception]],
        action: str = "fit",
    ) -> None:
        self._global_rank = global_rank
        self._queue = error_queue
        self._listed = tuple(listed)
        self._action = action
        self._sent = False

    def __call__(self, error: BaseException) -> None:
        """Send the report of ``error`` (only the first call of a rank sends anything)."""
        if self._sent:
            return
        self._sent = True
        root = logging.get_root_logger() if logging.is_root_logger_active() else None
        report = ErrorReport(
            global_rank=self._global_rank,
            traceback=format_exception(error)[-_MAX_REPORT_BYTES // 2 :],
            listed=isinstance(error, self._listed),
            log_path=root.log_file if root is not None else None,
            summary=failure_summary(error, self._action, self._global_rank),
        )
        try:
            pickled = pickle.dumps(error)
        except Exception:
            pickled = None
        if pickled is not None and len(pickled) <= _MAX_REPORT_BYTES // 2:
            report.pickled_error = pickled
        self._queue.put(report)


def _read_first_report(error_queue: Any) -> ErrorReport | None:
    if error_queue.empty():
        return None
    report = error_queue.get()
    return report if isinstance(report, ErrorReport) else None


def _log_failure(report: ErrorReport) -> None:
    """Show a rank's traceback and summary on stderr, and append them to the run's log file."""
    summary = report.summary or f"rank {report.global_rank} failed"
    text = f"{report.traceback.rstrip(chr(10))}\n{summary}\n"
    try:
        sys.stderr.write(text)
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    if report.log_path is None:
        return
    created = not logging.is_root_logger_active()
    if created:
        logging.create_default_loggers(enable_tensorboard=False)
        logging.restore_default_loggers(log_path=report.log_path)
    logging.get_root_logger().log_to_file(_std_logging.ERROR, text.rstrip("\n"))
    if created:
        logging.close_default_loggers()


@dataclasses.dataclass(frozen=True)
class Spawn:
    """What a spawned rank gets from the calling process.

    Attributes:
        world_size: the number of spawned processes.
        port: the port of the process group on ``localhost``.
        results: the queue the caller reads after a success (``Trainer.queue``).
        errors: the queue a failing rank reports on (:py:class:`ErrorReporter`).
        listed: the exception types the caller re-raises for this run.
        action: ``"fit"`` or ``"test"``.
    """

    world_size: int
    port: int
    results: Any
    errors: Any
    listed: tuple[type[Exception], ...]
    action: str


@dataclasses.dataclass(frozen=True)
class RunContext:
    """Where one process of a run stands; :py:func:`join` makes it.

    Attributes:
        global_rank: the rank of this process among all (``Trainer.rank``).
        local_rank: its rank on its node, which picks its GPU (``Model.rank``).
        world_size: the number of processes of the run.
        device: the device of this process.
        map_location: where the tensors of loaded checkpoints go.
        results: the result queue of a spawned run (``Trainer.queue``), else ``None``.
        report: sends this rank's failure to the calling process (spawned), else ``None``.
    """

    global_rank: int
    local_rank: int
    world_size: int
    device: torch.device
    map_location: Any
    results: Any = None
    report: Callable[[BaseException], None] | None = None

    @property
    def is_distributed(self) -> bool:
        """Whether the run has several processes."""
        return self.world_size > 1

    @property
    def collective_device(self) -> torch.device | None:
        """The device of the ranks' agreements (``None`` in a run of one process)."""
        return self.device if self.world_size > 1 else None


class Launchable(Protocol):
    """A run as :py:func:`launch` starts it."""

    config: RunConfig
    action: str

    def main(self, index: int | None = None, spawn: Spawn | None = None) -> bool:
        """Run the whole body in this process (``index``, ``spawn``: a spawned rank)."""

    def prepare_data(self) -> None:
        """Prepare the data once per node, before the body."""

    def listed_exceptions(self) -> tuple[type[Exception], ...]:
        """The exception types the Trainer re-raises for this run."""


def launch(run: Launchable) -> tuple[bool, Any]:
    """Run ``run.main`` where it must run: here, or spawned one process per GPU.

    When a spawned rank fails, the others are terminated and the first report is handled
    here: an exception whose type is listed is re-raised (with the rank's traceback
    attached as a note); otherwise the traceback is shown (stderr and the run's log file)
    and False is returned. Read small results only from the queue: a rank cannot exit
    while the data it put does not fit into the queue's pipe (about 64 KiB).

    Args:
        run: the run.

    Returns:
        Whether every process succeeded, and the result queue of a spawned run (``None``
        otherwise).

    Raises:
        Exception: the exception of a failed spawned rank, if its type is listed.
        DistributedRunError: if a spawned rank failed with a listed exception that cannot
            be re-created in this process.
    """
    config = run.config
    if not use_spawn(config):
        return run.main(), None
    run.prepare_data()
    context = mp.get_context("spawn")
    spawn = Spawn(
        len(config.gpu_ids),
        find_free_port(),
        context.Queue(),
        context.SimpleQueue(),
        run.listed_exceptions(),
        run.action,
    )
    try:
        mp.spawn(run.main, args=(spawn,), nprocs=spawn.world_size, join=True)
    except (mp.ProcessRaisedException, mp.ProcessExitedException) as spawn_error:
        return _spawn_failed(spawn_error, spawn.errors), None
    return True, spawn.results


def _spawn_failed(spawn_error: Exception, error_queue: Any) -> bool:
    """Handle the first failure of a spawned run: raise it if listed, else show it."""
    report = _read_first_report(error_queue)
    if report is None:
        # The rank died without a report (killed by a signal, say).
        index = getattr(spawn_error, "error_index", 0)
        report = ErrorReport(index, str(spawn_error).strip())
    if report.listed:
        error = report.error()
        if error is None:
            raise DistributedRunError(
                f"rank {report.global_rank} failed with:\n{report.traceback}"
            ) from None
        error.add_note(f"Raised on rank {report.global_rank}:\n{report.traceback}")
        raise error from None
    _log_failure(report)
    return False


def join(
    config: RunConfig, index: int | None, spawn: Spawn | None, prepare: Callable[[], None]
) -> RunContext:
    """Give this process its place in the run, joining the process group if there is one.

    ``prepare`` (the data module's ``prepare_data``) runs first in one process; under
    ``torchrun`` only on local rank 0 of each node while the other ranks wait, so that two
    processes never download or unpack the same files at once. A spawned run prepared in
    the calling process.

    Args:
        config: the run configuration.
        index: the rank of a spawned process (``None``: not spawned).
        spawn: what a spawned process got from the caller.
        prepare: called once per node before the body.

    Returns:
        The context of this process.

    Raises:
        RuntimeError: if this process already tore down its ``torchrun`` process group.
    """
    if spawn is not None and index is not None:
        return _join_spawned(config, index, spawn)
    if not config.is_distributed:
        prepare()
        return RunContext(0, 0, 1, config.device_for(0), config.map_location_for(0))
    # The local rank picks the GPU, which the NCCL group is bound to.
    _join_torchrun_group(config, config.device_for(int(os.environ.get("LOCAL_RANK", "0"))))
    info = dist.get_dist_info()
    try:
        if info.local_rank == 0:
            prepare()
        dist.safe_barrier()
    except BaseException:
        abandon_process_group()
        raise
    device = config.device_for(info.local_rank)
    location = config.map_location_for(info.local_rank)
    return RunContext(info.rank, info.local_rank, info.world_size, device, location)


def _join_spawned(config: RunConfig, index: int, spawn: Spawn) -> RunContext:
    """Join the process group of a spawned run on ``localhost``; report a failure."""
    report = ErrorReporter(index, spawn.errors, spawn.listed, spawn.action)
    try:
        device = config.device_for(index)
        dist.init_dist(
            backend="gloo" if config.use_cpu else "nccl",
            rank=index,
            world_size=spawn.world_size,
            master_port=spawn.port,
            device=None if config.use_cpu else device,
            timeout=config.dist_timeout,
        )
        release_group_at_exit()
    except BaseException as error:
        report(error)
        abandon_process_group()
        raise
    location = config.map_location_for(index)
    return RunContext(index, index, spawn.world_size, device, location, spawn.results, report)


def leave(context: RunContext, succeeded: bool) -> None:
    """Leave the run's process group: keep it, destroy it or tear it down after a failure.

    A ``torchrun`` group is kept for the next run of the process after a success; a
    spawned rank's group is destroyed. After a failure the group is torn down
    (:py:func:`abandon_process_group`).

    Args:
        context: the context of this process.
        succeeded: whether the body succeeded.
    """
    if not context.is_distributed:
        return
    if not succeeded:
        abandon_process_group()
    elif context.report is not None:
        dist.shutdown_dist()


__all__ = [
    "DistributedRunError",
    "ErrorReport",
    "ErrorReporter",
    "Launchable",
    "RunContext",
    "Spawn",
    "abandon_process_group",
    "end_with_parent",
    "find_free_port",
    "format_exception",
    "join",
    "launch",
    "leave",
    "release_group_at_exit",
    "use_spawn",
]
