"""The :py:class:`Vectorizer`: map a function over items in worker processes, in order."""

from __future__ import annotations

import multiprocessing as _std_mp
import queue as _queue
import sys
import traceback
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.multiprocessing as mp

from pyblaze.utils.stdmp import available_cores, terminate

_POLL_SECONDS = 0.2


class WorkerError(RuntimeError):
    """A worker of a :py:class:`Vectorizer` raised an exception or died.

    Attributes:
        rank: the worker's rank.
        index: the position of the item it was processing (``None`` during ``worker_init``
            or when the worker died).
        worker_traceback: the formatted traceback from the worker, if any.
    """

    def __init__(
        self, message: str, rank: int, index: int | None, worker_traceback: str = ""
    ) -> None:
        super().__init__(message)
        self.rank = rank
        self.index = index
        self.worker_traceback = worker_traceback


def _default_context() -> Any:
    """Fork on Linux when safe (fast start, nothing pickled); spawn otherwise.

    CUDA cannot be used in a forked child once the parent initialised it, so spawn is used
    then; on macOS forking is unsafe with system frameworks (and not the default).
    """
    methods = _std_mp.get_all_start_methods()
    if sys.platform.startswith("linux") and "fork" in methods and not torch.cuda.is_initialized():
        return mp.get_context("fork")
    return mp.get_context("spawn")


class Vectorizer:
    """Compute ``worker_func(item, *args, *init)`` for many items in worker processes.

    The results come back as a list in the order of the items, whatever order the workers
    finish them in. Each worker first calls ``worker_init(rank, **kwargs)`` once; its return
    value (a tuple is splatted) is appended to the arguments of every ``worker_func`` call,
    which is the place for per-worker set-up such as putting a model on the worker's device.
    ``callback_func()`` is called in the calling process once per finished item (for
    progress bars).

    Items with a length and index access (lists, tensors, datasets) are split into one
    contiguous share per worker; other iterables are streamed to the workers through a
    queue, keeping at most two items per worker in flight.

    Workers are started with ``fork`` on Linux when CUDA is not initialised in this process
    (nothing is pickled then except items and results), else with ``spawn``
    (``worker_func``, ``worker_init`` and ``kwargs`` must then be picklable).

    Example:
        .. code-block:: python

            def init(rank, scale):
                return rank * scale  # appended to every worker_func call of this worker

            def work(x, offset, worker_value):
                return x * x + offset + worker_value

            Vectorizer(work, init, num_workers=2, scale=100).process([0, 1, 2, 3], 1)
            # [1, 2, 105, 110]: items 0-1 ran on worker 0, items 2-3 on worker 1

    Args:
        worker_func: called as ``worker_func(item, *args, *init_values)`` in a worker.
        worker_init: called as ``worker_init(rank, **kwargs)`` once in each worker (rank
            ``0 .. num_workers - 1``); ``None`` adds no arguments.
        callback_func: called without arguments in this process after each finished item.
        num_workers: the number of processes; ``-1`` means one per CPU core this process
            may use (:py:func:`pyblaze.utils.stdmp.available_cores`), ``0`` runs everything
            in this process (rank 0).
        **kwargs: keyword arguments of ``worker_init``.

    Attributes:
        context: a :py:mod:`torch.multiprocessing` context to start the workers with
            instead of the default described above (``None``).

    Raises:
        TypeError: if ``worker_func`` (or a given ``worker_init``/``callback_func``) is not
            callable.
        ValueError: if ``num_workers`` is not ``-1`` or a non-negative int.
    """

    def __init__(
        self,
        worker_func: Callable[..., Any],
        worker_init: Callable[..., Any] | None = None,
        callback_func: Callable[[], Any] | None = None,
        num_workers: int = -1,
        **kwargs: Any,
    ) -> None:
        for name, value in (
            ("worker_func", worker_func),
            ("worker_init", worker_init),
            ("callback_func", callback_func),
        ):
            if value is not None and not callable(value):
                raise TypeError(f"{name} must be callable, got {value!r}")
        if worker_func is None:
            raise TypeError("worker_func must be callable, got None")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < -1:
            raise ValueError(
                f"num_workers must be -1 (one per CPU core) or an int >= 0, got {num_workers!r}"
            )
        self.num_workers = available_cores() if num_workers == -1 else num_workers
        self.worker_func = worker_func
        self.worker_init = worker_init
        self.callback_func = callback_func
        self.init_kwargs = kwargs
        self.context: Any = None

    def process(self, items: Iterable[Any], *args: Any) -> list[Any]:
        """Process every item and return the results in the order of the items.

        Args:
            items: the items; a sequence (``len`` and index access) is split among the
                workers, any other iterable is streamed to them.
            *args: further arguments of ``worker_func``, after the item.

        Returns:
            ``[worker_func(item, *args, *init_values) for item in items]``.

        Raises:
            WorkerError: if ``worker_init`` or ``worker_func`` raised in a worker (the
                message holds the worker's traceback) or a worker died. The other workers
                are stopped.
        """
        if self.num_workers == 0:
            extra = _as_args(_call_init(self.worker_init, 0, self.init_kwargs))
            results = []
            for item in items:
                results.append(self.worker_func(item, *args, *extra))
                if self.callback_func is not None:
                    self.callback_func()
            return results

        context = self.context or _default_context()
        if _is_sequence(items):
            return self._process_sequence(context, items, args)
        return self._process_stream(context, items, args)

    # -- sequences: one contiguous share per worker ------------------------------------------

    def _process_sequence(self, context: Any, items: Any, args: tuple[Any, ...]) -> list[Any]:
        count = len(items)
        if count == 0:
            return []
        workers = min(self.num_workers, count)
        bounds = [round(count * rank / workers) for rank in range(workers + 1)]
        results_queue, done = context.Queue(), context.Event()
        processes = []
        try:
            for rank in range(workers):
                share = [(i, items[i]) for i in range(bounds[rank], bounds[rank + 1])]
                processes.append(self._start(context, rank, share, results_queue, done, args))
            return self._collect(results_queue, processes, lambda finished: finished == count)
        finally:
            done.set()
            terminate(*processes)
            results_queue.cancel_join_thread()
            results_queue.close()

    def _start(
        self,
        context: Any,
        rank: int,
        source: Any,
        results_queue: Any,
        done: Any,
        args: tuple[Any, ...],
    ) -> Any:
        """Start one worker process reading its items from ``source``."""
        process = context.Process(
            target=_worker,
            args=(rank, source, results_queue, done, self.worker_func, self.worker_init,
                  self.init_kwargs, args),
            daemon=True,
        )  # fmt: skip
        process.start()
        return process

    # -- other iterables: streamed through a task queue --------------------------------------

    def _process_stream(
        self, context: Any, items: Iterable[Any], args: tuple[Any, ...]
    ) -> list[Any]:
        tasks, results_queue, done = context.Queue(), context.Queue(), context.Event()
        processes: list[Any] = []
        iterator: Any = None
        sent, exhausted = 0, False
        in_flight = 2 * self.num_workers

        def progress(finished: int) -> bool:
            """Keep ``in_flight`` items queued; tell whether every item is finished."""
            nonlocal sent, exhausted, iterator
            if iterator is None:
                # Only now: a data loader's own workers start after ours were forked.
                iterator = iter(items)
            while not exhausted and sent < finished + in_flight:
                try:
                    item = next(iterator)
                except StopIteration:
                    exhausted = True
                    for _ in processes:
                        tasks.put(None)
                    break
                tasks.put((sent, item))
                sent += 1
            return exhausted and finished == sent

        try:
            for rank in range(self.num_workers):
                processes.append(self._start(context, rank, tasks, results_queue, done, args))
            return self._collect(results_queue, processes, progress)
        finally:
            done.set()
            terminate(*processes)
            for q in (tasks, results_queue):
                q.cancel_join_thread()
                q.close()

    # -- shared --------------------------------------------------------------------------------

    def _collect(
        self,
        results_queue: Any,
        processes: list[Any],
        finished_all: Callable[[int], bool],
    ) -> list[Any]:
        """Gather ``(kind, rank, index, payload)`` messages until every item is done."""
        results: dict[int, Any] = {}
        while not finished_all(len(results)):
            kind, rank, index, payload = self._next_message(results_queue, processes)
            if kind == "error":
                where = "in worker_init" if index is None else f"on item {index}"
                raise WorkerError(
                    f"Vectorizer worker {rank} failed {where}:\n{payload}",
                    rank,
                    index,
                    payload,
                )
            results[index] = payload
            if self.callback_func is not None:
                self.callback_func()
        return [results[i] for i in range(len(results))]

    @staticmethod
    def _next_message(results_queue: Any, processes: list[Any]) -> tuple[Any, ...]:
        while True:
            try:
                return results_queue.get(timeout=_POLL_SECONDS)
            except _queue.Empty:
                for rank, process in enumerate(processes):
                    if process.exitcode not in (None, 0):
                        raise WorkerError(
                            f"Vectorizer worker {rank} died with exit code "
                            f"{process.exitcode} before finishing its items",
                            rank,
                            None,
                        ) from None


def _is_sequence(items: Any) -> bool:
    return hasattr(items, "__len__") and hasattr(items, "__getitem__")


def _call_init(init: Callable[..., Any] | None, rank: int, kwargs: dict[str, Any]) -> Any:
    return None if init is None else init(rank, **kwargs)


def _as_args(value: Any) -> tuple[Any, ...]:
    if value is None:
        return ()
    if isinstance(value, tuple):
        return value
    return (value,)


def _worker(
    rank: int,
    source: Any,
    results: Any,
    done: Any,
    func: Callable[..., Any],
    init: Callable[..., Any] | None,
    kwargs: dict[str, Any],
    args: tuple[Any, ...],
) -> None:
    """Body of one worker: ``init`` once, then ``func`` on each ``(index, item)``.

    ``source`` is the worker's share of a sequence (a list), or the task queue of a
    streamed iterable (``None`` ends it). A failure is reported on ``results`` and ends
    the worker.
    """
    try:
        extra = _as_args(_call_init(init, rank, kwargs))
    except BaseException:
        results.put(("error", rank, None, traceback.format_exc()))
        return
    for index, item in source if isinstance(source, list) else iter(source.get, None):
        try:
            value = func(item, *args, *extra)
        except BaseException:
            results.put(("error", rank, index, traceback.format_exc()))
            return
        results.put(("ok", rank, index, value))
    # Tensors in the results are shared through this process: keep it alive until the
    # calling process has received them all.
    done.wait()


__all__ = ["Vectorizer", "WorkerError"]
