"""pyblaze.utils: numpy, stdlib, stdmp and torch helpers."""

from __future__ import annotations

import multiprocessing
import signal
import time

import numpy as np
import pytest
import torch

from pyblaze.utils import numpy as xnp
from pyblaze.utils import stdlib, stdmp
from pyblaze.utils import torch as xtorch


def test_find_contexts() -> None:
    walks = np.array([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]])
    contexts = xnp.find_contexts(walks, 3)
    assert contexts.shape == (2, 3, 3)
    assert contexts[0].tolist() == [[1, 2, 3], [2, 3, 4], [3, 4, 5]]
    without_pivot, pivots = xnp.find_contexts(walks, 3, exclude_pivot=True)
    assert without_pivot[1].tolist() == [[6, 8], [7, 9], [8, 10]]
    assert pivots.tolist() == [[2, 3, 4], [7, 8, 9]]
    assert xnp.find_contexts(np.arange(4), 2).tolist() == [[0, 1], [1, 2], [2, 3]]
    with pytest.raises(ValueError, match="context_size must be an int >= 2"):
        xnp.find_contexts(walks, 1)
    with pytest.raises(ValueError, match="must be odd with exclude_pivot=True"):
        xnp.find_contexts(walks, 2, exclude_pivot=True)
    with pytest.raises(ValueError, match="larger than the last axis"):
        xnp.find_contexts(walks, 6)


def test_stdlib_helpers() -> None:
    assert stdlib.flatten([[1, 2], [], [3]]) == [1, 2, 3]
    calls = []

    class Thing:
        @stdlib.cached_property
        def value(self) -> int:
            calls.append(1)
            return 42

    thing = Thing()
    assert thing.value == thing.value == 42 and calls == [1]


def _ignore_sigterm_and_sleep() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(60)


def test_stdmp_terminate_kills_processes_that_ignore_sigterm() -> None:
    context = multiprocessing.get_context("fork")
    quick = context.Process(target=time.sleep, args=(0.01,))
    stubborn = context.Process(target=_ignore_sigterm_and_sleep)
    quick.start()
    stubborn.start()
    time.sleep(0.2)
    started = time.monotonic()
    stdmp.terminate(quick, stubborn)
    assert time.monotonic() - started < 5
    assert quick.exitcode == 0 and stubborn.exitcode == -signal.SIGKILL


def test_torch_helpers() -> None:
    t = torch.arange(6.0).reshape(2, 3).t()  # not contiguous
    moved = xtorch.to_device("cpu", {"a": [t, None], "b": (t, 3)})
    assert moved["a"][0].is_contiguous() and moved["a"][1] is None and moved["b"][1] == 3
    assert torch.equal(moved["b"][0], t)
    first, second = xtorch.to_device(torch.device("cpu"), t, [t])
    assert torch.equal(first, t) and isinstance(second, list)
    shared = xtorch.share_memory([torch.zeros(2)])
    assert shared[0].is_shared()
    assert xtorch.gpu_device(False) == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="gpu=True needs CUDA"):
            xtorch.gpu_device(True)
        with pytest.raises(ValueError, match="gpu=0 is not a GPU of this machine"):
            xtorch.gpu_device(0)
    with pytest.raises(TypeError, match="gpu must be a bool or an int"):
        xtorch.gpu_device("cuda")  # type: ignore[arg-type]
