"""``predict(parallel=True)``: run an engine's ``predict_batch`` on :py:class:`Vectorizer` workers.

PyBlaze 1.1.6 made predictions in worker processes when the device setting allowed it:

* on the CPU (``gpu=False``, or ``gpu="auto"`` without CUDA): one worker per CPU core this
  process may use (never more workers than batches), each running PyTorch with
  ``cores // workers`` threads;
* on several GPUs (a list of more than one id, or ``"auto"`` with several GPUs): one worker
  per GPU, each with its own copy of the model on its GPU.

A single GPU, ``parallel=False`` or ``num_workers`` of 0 run in the calling process as
before. Batches are streamed to the workers; the outputs come back in the order of the
batches, and the prediction callbacks' ``after_batch`` runs in the calling process once per
finished batch. Unlike 1.1.6, ``gpu=0`` means "GPU 0" here, not "False" (1.1.6 treated a
zero as falsy and started a worker process for it).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from pyblaze.utils.stdmp import available_cores
from pyblaze.utils.torch import to_device

from .vectorizer import Vectorizer


def parallel_devices(gpu: Any, parallel: bool) -> list[torch.device] | None:
    """Return one device per prediction worker, or ``None`` to predict in this process.

    Args:
        gpu: the ``gpu`` argument of ``predict``.
        parallel: the ``parallel`` argument of ``predict``.

    Returns:
        The workers' devices (``cpu`` once per core, or one GPU each), or ``None``.

    Raises:
        ValueError: if a GPU list names a GPU that does not exist.
    """
    if not parallel:
        return None
    cuda_count = torch.cuda.device_count()
    if gpu is False or (isinstance(gpu, str) and gpu == "auto" and cuda_count == 0):
        return [torch.device("cpu")] * available_cores()
    if isinstance(gpu, str) and gpu == "auto" and cuda_count > 1:
        return [torch.device("cuda", i) for i in range(cuda_count)]
    if isinstance(gpu, list | tuple) and len(gpu) > 1:
        for gpu_id in gpu:
            if (
                isinstance(gpu_id, bool)
                or not isinstance(gpu_id, int)
                or not (0 <= gpu_id < cuda_count)
            ):
                raise ValueError(
                    f"gpu={list(gpu)!r} names GPU {gpu_id!r}, but the GPUs of this "
                    f"machine are {list(range(cuda_count))}"
                )
        return [torch.device("cuda", i) for i in gpu]
    return None


def _batch_count(data: Iterable[Any], iterations: int | None) -> int | None:
    """The batches to predict: ``iterations``, else the data's length, else ``None``."""
    if iterations is not None:
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
            raise ValueError(f"iterations must be a positive int, got {iterations!r}")
        return iterations
    try:
        return len(data)  # type: ignore[arg-type]
    except TypeError:
        return None  # a stream: predicted to its end


def _init_worker(rank: int, devices: list[torch.device], engine: Any, threads: int) -> Any:
    device = devices[rank]
    if device.type == "cpu":
        torch.set_num_threads(threads)
    if isinstance(engine.model, nn.DataParallel):
        engine.model = engine.model.module  # this worker's copy only
    engine.model.to(device)
    engine.model.eval()
    engine.device = device
    return engine, device


def _predict_one(batch: Any, kwargs: dict[str, Any], engine: Any, device: torch.device) -> Any:
    with torch.no_grad():
        output = engine.predict_batch(to_device(device, batch), **kwargs)
    return to_device(torch.device("cpu"), output)


def predict_batches(
    engine: Any,
    data: Iterable[Any],
    iterations: int | None,
    callbacks: Any,
    gpu: Any,
    parallel: bool,
    kwargs: dict[str, Any],
    sequential: Callable[[], list[Any]],
) -> list[Any]:
    """Make the per-batch predictions of ``engine.predict`` (before collation).

    Runs :py:meth:`~pyblaze.nn.BaseEngine.predict_batch` on :py:class:`Vectorizer` workers
    when :py:func:`parallel_devices` gives devices, else calls ``sequential()``.

    Args:
        engine: the engine (its ``model``, ``predict_batch`` and callback hooks are used).
        data: the batches.
        iterations: use only this many batches.
        callbacks: the prediction callbacks of ``predict`` (a ``CallbackList``).
        gpu: the ``gpu`` argument of ``predict``.
        parallel: the ``parallel`` argument of ``predict``.
        kwargs: the arguments of ``predict_batch``.
        sequential: computes the same list in this process (the engine's own loop).

    Returns:
        One output per batch, on the CPU, in the order of the batches.

    Data without a length (a stream) and no ``iterations`` is predicted to its end.

    Raises:
        ValueError: for an invalid ``iterations`` or GPU list.
        pyblaze.multiprocessing.WorkerError: if ``predict_batch`` raised in a worker.
    """
    devices = parallel_devices(gpu, parallel)
    if devices is None:
        return sequential()
    num_batches = _batch_count(data, iterations)
    if devices[0].type == "cpu" and num_batches is not None:
        devices = devices[: max(1, min(len(devices), num_batches))]
    threads = max(1, available_cores() // len(devices))
    model = engine.model.module if isinstance(engine.model, nn.DataParallel) else engine.model

    callbacks.call("before_predictions", model, num_batches)
    was_training = model.training
    model.eval()
    if any(device.type == "cuda" for device in devices):
        model.share_memory()

    def after_batch() -> None:
        callbacks.batch_hook(None)

    vectorizer = Vectorizer(
        _predict_one,
        _init_worker,
        callback_func=after_batch,
        num_workers=len(devices),
        devices=devices,
        engine=engine,
        threads=threads,
    )

    def batches() -> Iterable[Any]:
        yield from data if num_batches is None else itertools.islice(data, num_batches)

    try:
        outputs = vectorizer.process(batches(), kwargs)
    finally:
        model.train(was_training)
    callbacks.call("after_predictions")
    return outputs


__all__ = ["parallel_devices", "predict_batches"]
