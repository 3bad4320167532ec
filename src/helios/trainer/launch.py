"""Starting a run: in this process, under ``torchrun``, or spawned one process per GPU.

The Trainer hands over a function that runs the whole ``fit``/``test`` body in one process;
this module decides where that body runs and how results and errors come back.

* **One process, or torchrun.** :py:func:`run_in_process` runs the body here. Under
  ``torchrun`` with several processes it first joins the process group that ``torchrun``
  prepared (gloo on the CPU, NCCL on GPUs), once per process: later runs in the same process
  reuse it, because a group cannot be initialised again from ``torchrun``'s environment once
  destroyed. If the body fails, the group is torn down. The other ranks' pending
  collectives then fail as soon as the failed process exits (which also makes ``torchrun``
  stop the job); a script that carries on after a failed ``fit`` keeps them waiting, since
  a ``DistributedDataParallel`` model still holds the group's connections open.
* **Spawned.** :py:func:`run_spawned` starts one process per GPU and waits for them. A rank
  that fails sends its exception and traceback to the calling process (see
  :py:class:`ErrorReporter`), which shows the traceback, re-raises the exception when its
  type is listed in ``train_exceptions``/``test_exceptions`` and otherwise returns False.
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
from typing import TYPE_CHECKING, Any

import torch.distributed
import torch.multiprocessing as mp

from helios.core import distributed as dist
from helios.core import logging

from . import failures

if TYPE_CHECKING:
    from .trainer import Trainer

RunBody = Callable[[], bool]

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


def use_spawn(trainer: Trainer) -> bool:
    """Return whether the run must spawn its own processes (several GPUs, no torchrun)."""
    return trainer.is_distributed and not dist.is_using_torchrun()


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


def _join_torchrun_group(trainer: Trainer) -> None:
    global _joined_torchrun_group
    if dist.is_dist_active():
        return
    if _joined_torchrun_group:
        raise RuntimeError(
            "error: the torchrun process group of this process was torn down (after a failed "
            "run, or by a call to destroy_process_group) and cannot be joined again; start a "
            "new torchrun job"
        )
    end_with_parent()
    dist.init_dist(
        backend="gloo" if trainer.uses_cpu else "nccl",
        device=None if trainer.uses_cpu else trainer.device,
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


def run_in_process(
    trainer: Trainer, body: RunBody, prepare: Callable[[], None] | None = None
) -> bool:
    """Run the body in this process, joining the ``torchrun`` process group if needed.

    Sets the trainer's ``rank`` and ``local_rank`` (0 when not distributed; under
    ``torchrun`` from its environment). ``prepare`` (the data module's ``prepare_data``)
    runs first: under ``torchrun`` only on local rank 0 of each node, while the other ranks
    wait, so that two processes never download or unpack the same files at once. The group
    is kept for later runs of this process after a success, and torn down after a failure
    (a False return or an exception).

    Args:
        trainer: the trainer (its ``use_cpu`` picks gloo or NCCL).
        body: the in-process run.
        prepare: called once per node before the body.

    Returns:
        What the body returned.

    Raises:
        RuntimeError: if this process already tore down its ``torchrun`` process group.
    """
    if not trainer.is_distributed:
        trainer.rank = 0
        trainer.local_rank = 0
        if prepare is not None:
            prepare()
        return body()

    # The local rank picks the GPU, which the NCCL group is bound to.
    trainer.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    _join_torchrun_group(trainer)
    info = dist.get_dist_info()
    trainer.rank = info.rank
    trainer.local_rank = info.local_rank
    try:
        if prepare is not None:
            if info.local_rank == 0:
                prepare()
            dist.safe_barrier()
        succeeded = body()
    except BaseException:
        abandon_process_group()
        raise
    if not succeeded:
        abandon_process_group()
    return succeeded


@dataclasses.dataclass
class ErrorReport:
    """What a failed rank sends to the calling process.

    Args:
        rank: the rank that failed.
        traceback: the formatted traceback.
        listed: whether the exception's type is in the trainer's list for the current mode.
        log_path: the log file of the run, if file logging was enabled.
        pickled_error: the pickled exception, if it could be pickled.
        summary: the one-line summary naming the hook (see :py:mod:`helios.trainer.failures`).
    """

    rank: int
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
        rank: the rank of this process.
        error_queue: the queue read by :py:func:`run_spawned`.
        listed: the exception types that the Trainer re-raises for the current mode.
        action: what runs (``"fit"`` or ``"test"``), for the summary line.
    """

    def __init__(
        self,
        rank: int,
        error_queue: Any,
        listed: Sequence[type[Exception]],
        action: str = "fit",
    ) -> None:
        self._rank = rank
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
            rank=self._rank,
            traceback=format_exception(error)[-_MAX_REPORT_BYTES // 2 :],
            listed=isinstance(error, self._listed),
            log_path=root.log_file if root is not None else None,
            summary=failures.failure_summary(error, self._action, self._rank),
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
    summary = report.summary or f"error: rank {report.rank} failed"
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


def run_spawned(
    trainer: Trainer,
    worker: Callable[..., None],
    args: tuple[Any, ...],
    world_size: int,
) -> bool:
    """Spawn ``world_size`` processes running ``worker`` and wait for all of them.

    The worker is called as ``worker(rank, world_size, port, result_queue, error_queue,
    *args)`` in each process; it joins a process group on ``localhost:port`` and reports its
    first exception through an :py:class:`ErrorReporter` on ``error_queue``. When every rank
    succeeds, ``trainer.queue`` becomes the result queue, from which the caller reads what
    the ranks put there. Read small results only: a rank cannot exit while the data it put
    does not fit into the queue's pipe (about 64 KiB).

    When a rank fails, the others are terminated and the first report is handled here: an
    exception whose type the rank's trainer lists for the current mode is re-raised (with
    the rank's traceback attached as a note); otherwise the traceback is logged (to stdout
    and to the run's log file) and False is returned.

    Args:
        trainer: the trainer; its ``queue`` is set to the result queue on success.
        worker: the module-level function each rank runs.
        args: further arguments for the worker (must be picklable).
        world_size: the number of processes.

    Returns:
        True if every rank succeeded, False if a rank failed with an unlisted exception.

    Raises:
        Exception: the exception of a failed rank, if its type is listed.
        DistributedRunError: if a rank failed with a listed exception that cannot be
            re-created in this process.
    """
    context = mp.get_context("spawn")
    result_queue = context.Queue()
    error_queue = context.SimpleQueue()
    port = find_free_port()
    try:
        mp.spawn(
            worker,
            args=(world_size, port, result_queue, error_queue, *args),
            nprocs=world_size,
            join=True,
        )
    except (mp.ProcessRaisedException, mp.ProcessExitedException) as spawn_error:
        report = _read_first_report(error_queue)
        if report is None:
            # The rank died without a report (killed by a signal, say).
            report = ErrorReport(spawn_error.error_index, str(spawn_error).strip())
        if report.listed:
            error = report.error()
            if error is None:
                raise DistributedRunError(
                    f"error: rank {report.rank} failed with:\n{report.traceback}"
                ) from None
            error.add_note(f"Raised on rank {report.rank}:\n{report.traceback}")
            raise error from None
        _log_failure(report)
        return False
    trainer.queue = result_queue
    return True


__all__ = [
    "DistributedRunError",
    "ErrorReport",
    "ErrorReporter",
    "abandon_process_group",
    "end_with_parent",
    "find_free_port",
    "format_exception",
    "release_group_at_exit",
    "run_in_process",
    "run_spawned",
    "use_spawn",
]
