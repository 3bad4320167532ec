"""The check before training: the first validation batch and every metric, run once.

A validation loader of the wrong structure, a metric that returns a vector or ``None``, or
predictions and targets that a loss would broadcast wrongly would otherwise fail only after
a whole training epoch. The check runs the model on the first batch of the validation data
(made from the loader's dataset in this process, without worker processes) and computes
every validation metric on it (a copy of a metric object, so its state is untouched; a
function is called itself), in eval mode without gradients, with every random generator
(Python's, NumPy's, torch's CPU and CUDA ones) put back afterwards, so the training state
and the random streams are those of a run without it: exact resume still holds.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import random
import types
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

from pyblaze.nn._checks import check_loss_shapes
from pyblaze.nn._metrics import Metric, score_outputs
from pyblaze.nn._tensors import to_device

if TYPE_CHECKING:
    from pyblaze.nn._epoch import TrainSpec
    from pyblaze.nn._protocols import Engine

_NOTE = (
    "(found by fit's check before training, which runs the first batch of val_data and "
    "every metric once on it)"
)


@contextlib.contextmanager
def random_state_kept(device: torch.device) -> Iterator[None]:
    """Put Python's, NumPy's and torch's random generators back as they were.

    Args:
        device: the device of the run (its CUDA generator is kept too).
    """
    python_state, numpy_state = random.getstate(), np.random.get_state()
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def first_batch(loader: DataLoader) -> Any:
    """Make the first batch of a loader in this process (no worker processes).

    Args:
        loader: a map-style loader with a batch sampler, or a loader over a stream
            (``IterableDataset``: its first ``batch_size`` samples).

    Returns:
        The collated batch.
    """
    if isinstance(loader.dataset, IterableDataset):
        samples = itertools.islice(iter(loader.dataset), loader.batch_size or 1)
        return loader.collate_fn(list(samples))
    indices = next(iter(loader.batch_sampler))  # type: ignore[arg-type]
    return loader.collate_fn([loader.dataset[index] for index in indices])


def sanity_check(engine: Engine, module: nn.Module, spec: TrainSpec, device: torch.device) -> None:
    """Run the first validation batch through ``eval_batch`` and every validation metric.

    Args:
        engine: the engine (its ``model`` is the plain module during the check).
        module: the trained model, never a distributed wrapper.
        spec: the arguments of ``train``; needs ``spec.val_data``.
        device: the device of this process.

    Raises:
        Exception: whatever the batch or a metric raises, with a note saying where it came
            from; ``ValueError`` for a loss's wrongly broadcasting shapes.
    """
    loader = spec.val_data
    if loader is None:
        return
    wrapped, was_training = engine.model, module.training
    engine.model = module
    module.eval()
    try:
        with random_state_kept(device), torch.no_grad():
            batch = to_device(first_batch(loader), device)
            output = to_device(engine.eval_batch(batch, **spec.eval_kwargs), "cpu")
            loss = spec.val_metrics.get("loss")
            if loss is not None and isinstance(output, tuple | list) and len(output) == 2:
                check_loss_shapes(loss, output[0], output[1])
            score_outputs(engine, [output], _copies(spec.val_metrics))
    except Exception as error:
        error.add_note(_NOTE)
        raise
    finally:
        engine.model = wrapped
        module.train(was_training)


def _copies(metrics: Mapping[str, Metric]) -> dict[str, Metric]:
    """Copies of metric objects (their state stays untouched); functions as they are."""
    copies: dict[str, Metric] = {}
    for name, metric in metrics.items():
        if isinstance(metric, types.FunctionType | types.MethodType | types.BuiltinFunctionType):
            copies[name] = metric
            continue
        try:
            copies[name] = copy.deepcopy(metric)
        except Exception:
            copies[name] = metric
    return copies


__all__ = ["first_batch", "random_state_kept", "sanity_check"]
