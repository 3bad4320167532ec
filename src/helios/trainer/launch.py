"""Starting a run: in this process, under ``torchrun``, or spawned one process per GPU.

The Trainer hands over a function that runs the whole ``fit``/``test`` body in one process;
this module decides where that body runs and how results and errors come back.
"""

from __future__ import annotations

import socket
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch.multiprocessing as mp

from helios.core import distributed as dist

if TYPE_CHECKING:
    from .trainer import Trainer

RunBody = Callable[[], bool]


class DistributedRunError(RuntimeError):
    """Raised in the calling process when a spawned rank failed; carries its traceback."""


def find_free_port() -> int:
    """Return a TCP port that is free on this machine right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("localhost", 0))
        return int(sock.getsockname()[1])


def run_under_torchrun(trainer: Trainer, body: RunBody) -> bool:
    """Join the process group that ``torchrun`` set up, run the body, and leave it.

    Args:
        trainer: the trainer (its ``use_cpu`` picks gloo or NCCL).
        body: the in-process run.

    Returns:
        What the body returned.
    """
    started_group = False
    if trainer.is_distributed and not dist.is_dist_active():
        dist.init_dist(backend="gloo" if trainer.uses_cpu else "nccl")
        started_group = True
    info = dist.get_dist_info()
    trainer.rank = info.rank
    trainer.local_rank = info.local_rank
    try:
        return body()
    finally:
        if started_group and dist.is_dist_active():
            dist.shutdown_dist()


def spawn(
    trainer: Trainer, worker: Callable[..., None], args: tuple[Any, ...], world_size: int
) -> Any:
    """Spawn one process per GPU and wait for all of them.

    Args:
        trainer: the trainer; its ``queue`` is set to the result queue shared with the ranks.
        worker: the function each rank runs, called as ``worker(rank, world_size, port,
            result_queue, error_queue, *args)``.
        args: further arguments for the worker (must be picklable).
        world_size: the number of processes.

    Returns:
        The error queue (empty when every rank succeeded).

    Raises:
        DistributedRunError: if a rank failed, with that rank's traceback.
    """
    context = mp.get_context("spawn")
    result_queue = context.Queue()
    error_queue = context.Queue()
    port = find_free_port()
    try:
        mp.spawn(
            worker,
            args=(world_size, port, result_queue, error_queue, *args),
            nprocs=world_size,
            join=True,
        )
    except mp.ProcessRaisedException as error:
        raise DistributedRunError(str(error)) from None
    except mp.ProcessExitedException as error:
        raise DistributedRunError(str(error)) from None
    trainer.queue = result_queue
    return error_queue


def format_exception(error: BaseException) -> str:
    """Return the full traceback of an exception as text."""
    return "".join(traceback.format_exception(type(error), error, error.__traceback__))


def use_spawn(trainer: Trainer) -> bool:
    """Return whether the run must spawn its own processes (several GPUs, no torchrun)."""
    return trainer.is_distributed and not dist.is_using_torchrun()


__all__ = [
    "DistributedRunError",
    "find_free_port",
    "format_exception",
    "run_under_torchrun",
    "spawn",
    "use_spawn",
]
