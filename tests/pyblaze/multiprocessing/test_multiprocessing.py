"""pyblaze.multiprocessing.Vectorizer and predict(parallel=True) on real worker processes."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import pyblaze.nn as xnn
from pyblaze.multiprocessing import Vectorizer, WorkerError
from pyblaze.multiprocessing.prediction import parallel_devices


def _init(rank: int, scale: int = 1) -> tuple[int, int, int]:
    return rank, os.getpid(), scale


def _work(item: int, offset: int, rank: int, pid: int, scale: int) -> dict[str, int]:
    # Later items finish first, so the results arrive out of order.
    time.sleep(0.002 * (20 - item % 20))
    return {"value": item * scale + offset, "rank": rank, "pid": pid, "here": os.getpid()}


def _stream(n: int) -> Any:
    yield from range(n)


@pytest.mark.parametrize("kind", ["sequence", "stream"])
def test_results_keep_the_order_of_the_items(kind: str) -> None:
    ticks: list[int] = []
    vectorizer = Vectorizer(
        _work, _init, callback_func=lambda: ticks.append(os.getpid()), num_workers=2, scale=10
    )
    items = list(range(23)) if kind == "sequence" else _stream(23)
    results = vectorizer.process(items, 5)

    assert [r["value"] for r in results] == [i * 10 + 5 for i in range(23)]
    # worker_init ran once per worker, in that worker, with its rank and the kwargs.
    assert {r["rank"] for r in results} == {0, 1}
    assert all(r["pid"] == r["here"] != os.getpid() for r in results)
    assert len({r["pid"] for r in results}) == 2
    assert {r["pid"] for r in results if r["rank"] == 0} != {
        r["pid"] for r in results if r["rank"] == 1
    }
    # One callback per item, in the calling process.
    assert ticks == [os.getpid()] * 23


def test_sequences_are_split_into_contiguous_shares() -> None:
    results = Vectorizer(_work, _init, num_workers=3).process(list(range(9)), 0)
    assert [r["rank"] for r in results] == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_no_workers_runs_in_this_process_with_rank_0() -> None:
    ticks: list[int] = []
    results = Vectorizer(
        _work, _init, callback_func=lambda: ticks.append(1), num_workers=0, scale=2
    ).process(range(4), 1)
    assert [r["value"] for r in results] == [1, 3, 5, 7]
    assert {(r["rank"], r["pid"], r["here"]) for r in results} == {(0, os.getpid(), os.getpid())}
    assert ticks == [1] * 4


def test_without_worker_init_and_more_workers_than_items() -> None:
    assert Vectorizer(abs, num_workers=4).process([-1, 2, -3]) == [1, 2, 3]
    assert Vectorizer(abs, num_workers=2).process([]) == []
    assert Vectorizer(abs, num_workers=2).process(iter([])) == []
    assert Vectorizer(abs).num_workers == len(os.sched_getaffinity(0))


def _fail_on_three(item: int) -> int:
    if item == 3:
        raise KeyError("three")
    return item


def _die_on_two(item: int) -> int:
    if item == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return item


def _bad_init(rank: int) -> None:
    raise ValueError(f"init failed in {rank}")


@pytest.mark.parametrize("items", [list(range(6)), _stream(6)], ids=["sequence", "stream"])
def test_errors_in_workers_are_raised_with_the_worker_traceback(items: Any) -> None:
    with pytest.raises(
        WorkerError, match=r"(?s)worker \d failed on item 3:\n.*KeyError: 'three'"
    ) as e:
        Vectorizer(_fail_on_three, num_workers=2).process(items)
    assert e.value.index == 3 and "_fail_on_three" in e.value.worker_traceback


def test_errors_in_worker_init_and_dead_workers() -> None:
    with pytest.raises(WorkerError, match=r"(?s)failed in worker_init:\n.*ValueError: init failed"):
        Vectorizer(abs, _bad_init, num_workers=2).process([1, 2])
    with pytest.raises(WorkerError, match=r"worker 1 died with exit code -9"):
        Vectorizer(_die_on_two, num_workers=2).process([0, 1, 2, 3])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"worker_func": 3}, TypeError, "worker_func must be callable"),
        ({"worker_func": abs, "worker_init": "x"}, TypeError, "worker_init must be callable"),
        ({"worker_func": abs, "num_workers": -2}, ValueError, "num_workers must be -1"),
        ({"worker_func": abs, "num_workers": 1.5}, ValueError, "num_workers must be -1"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        Vectorizer(**kwargs)


# -- predict(parallel=True) ----------------------------------------------------------------


class PidModel(xnn.Estimator, nn.Module):
    """Outputs its linear layer and, in the last column, the id of the process it ran in."""

    __engine__ = xnn.SupervisedEngine

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pid = torch.full((x.shape[0], 1), float(os.getpid()))
        threads = torch.full((x.shape[0], 1), float(torch.get_num_threads()))
        return torch.cat([self.fc(x), pid, threads], dim=1)


class Recorder(xnn.PredictionCallback):
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any, int]] = []

    def before_predictions(self, model: nn.Module, num_iterations: int) -> None:
        self.calls.append(("before", num_iterations, os.getpid()))

    def after_batch(self, *args: Any) -> None:
        self.calls.append(("batch", args, os.getpid()))

    def after_predictions(self) -> None:
        self.calls.append(("after", None, os.getpid()))


def test_parallel_predict_runs_on_worker_processes_in_order() -> None:
    model = PidModel()
    x = torch.randn(50, 3)
    loader = TensorDataset(x).loader(batch_size=4)
    recorder = Recorder()

    out = model.predict(loader, gpu=False, callbacks=[recorder])
    assert out.shape == (50, 4)
    torch.testing.assert_close(out[:, :2], model.fc(x).detach())
    workers = set(out[:, 2].tolist())
    assert len(workers) == min(2, len(os.sched_getaffinity(0))) and os.getpid() not in workers
    # Each worker runs torch with its share of the cores.
    assert set(out[:, 3].tolist()) == {max(1, len(os.sched_getaffinity(0)) // len(workers))}
    assert recorder.calls == [
        ("before", 13, os.getpid()),
        *[("batch", (None,), os.getpid())] * 13,
        ("after", None, os.getpid()),
    ]
    assert model.training  # the mode is restored

    sequential = model.predict(loader, parallel=False)
    assert set(sequential[:, 2].tolist()) == {float(os.getpid())}
    torch.testing.assert_close(sequential[:, :2], out[:, :2])

    # "auto" without CUDA is the CPU; iterations limits the batches.
    limited = model.predict(loader, iterations=3)
    assert limited.shape == (12, 4) and os.getpid() not in set(limited[:, 2].tolist())


class _FailingEngine(xnn.SupervisedEngine):
    def predict_batch(self, data: Any, **kwargs: Any) -> Any:
        raise RuntimeError("predict_batch failed")


def test_parallel_predict_reports_worker_errors() -> None:
    engine = _FailingEngine(PidModel())
    with pytest.raises(
        WorkerError, match=r"(?s)failed on item.*RuntimeError: predict_batch failed"
    ):
        engine.predict(TensorDataset(torch.randn(8, 3)).loader(batch_size=4), gpu=False)


def test_parallel_devices() -> None:
    cores = len(os.sched_getaffinity(0))
    assert parallel_devices(False, True) == [torch.device("cpu")] * cores
    assert parallel_devices(False, False) is None
    if not torch.cuda.is_available():
        assert parallel_devices("auto", True) == [torch.device("cpu")] * cores
        with pytest.raises(ValueError, match=r"gpu=\[0, 1\] names GPU 0"):
            parallel_devices([0, 1], True)
    # A single device, including GPU 0, runs in this process (1.1.6 treated 0 as False).
    assert parallel_devices(0, True) is None
    assert parallel_devices([0], True) is None
    assert parallel_devices(True, True) is None


@pytest.mark.slow
def test_spawned_workers_when_fork_is_not_safe(monkeypatch: pytest.MonkeyPatch) -> None:
    """With CUDA initialised, workers are spawned: everything they need is pickled."""
    import multiprocessing as std_mp

    from pyblaze.multiprocessing import vectorizer

    spawned: list[str] = []

    def spawn_context() -> Any:
        spawned.append("spawn")
        return torch.multiprocessing.get_context("spawn")

    monkeypatch.setattr(vectorizer, "_default_context", spawn_context)
    assert Vectorizer(abs, num_workers=2).process([-3, 4, -5]) == [3, 4, 5]

    torch.manual_seed(0)
    engine = xnn.SupervisedEngine(nn.Sequential(nn.Linear(3, 4), nn.Tanh()))
    x = torch.randn(20, 3)
    out = engine.predict(TensorDataset(x).loader(batch_size=6), gpu=False)
    torch.testing.assert_close(out, engine.model(x).detach())
    assert spawned == ["spawn", "spawn"]
    assert "fork" in std_mp.get_all_start_methods()


def _docstring_init(rank: int, scale: int) -> int:
    return rank * scale


def _docstring_work(x: int, offset: int, worker_value: int) -> int:
    return x * x + offset + worker_value


def test_the_docstring_example() -> None:
    vectorizer = Vectorizer(_docstring_work, _docstring_init, num_workers=2, scale=100)
    assert vectorizer.process([0, 1, 2, 3], 1) == [1, 2, 105, 110]
