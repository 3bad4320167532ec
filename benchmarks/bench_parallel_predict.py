"""Speed-up of ``predict(parallel=True)`` (Vectorizer worker processes) on a CPU-bound model.

The model is a deep MLP of small layers (many small matrix products, which intra-op threads
speed up poorly), run on synthetic data in batches. Three setups predict the same batches:

* ``sequential, N threads``: ``predict(..., parallel=False)`` in this process with torch
  using all ``N`` cores (the default before ``parallel`` was honoured);
* ``sequential, 1 thread``: the same with one torch thread;
* ``parallel, W processes``: ``predict(..., gpu=False)`` (``parallel=True``): ``W``
  Vectorizer workers (``--workers``, default 2), each with ``N // W`` torch threads.

Times are wall-clock seconds of the whole ``predict`` call (worker start-up included), best
of ``--repeats``; the outputs of all setups are checked to be equal. Usage (from the
repository root)::

    PYTHONPATH=src python benchmarks/bench_parallel_predict.py
    PYTHONPATH=src python benchmarks/bench_parallel_predict.py --batches 64 --depth 32

It prints a markdown table. On a machine with fewer free cores than workers it measures
contention, not scaling; the load average is printed for that reason.

Measured on the 2-core development machine shared with other jobs (load average 11), the
defaults (128 batches of 32, width 256, depth 64): sequential with 2 threads 69.3 s (torch's
intra-op threads collapse when the cores are oversubscribed), sequential with 1 thread
3.21 s, 2 worker processes 2.67 s: 26x the default sequential run, 1.20x the 1-thread run.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from torch import nn
from torch.utils.data import TensorDataset

import pyblaze.nn as xnn
from pyblaze.multiprocessing import prediction
from pyblaze.utils.stdmp import available_cores


class DeepMLP(xnn.Estimator, nn.Module):
    """``depth`` blocks of Linear(width, width) + ReLU, then a 10-way head."""

    __engine__ = xnn.SupervisedEngine

    def __init__(self, width: int, depth: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(depth):
            layers += [nn.Linear(width, width), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _time(function: object, repeats: int) -> tuple[float, torch.Tensor]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()  # type: ignore[operator]
        best = min(best, time.perf_counter() - start)
    assert result is not None
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--depth", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    cores = available_cores()
    torch.manual_seed(0)
    model = DeepMLP(args.width, args.depth)
    x = torch.randn(args.batches * args.batch_size, args.width)
    loader = TensorDataset(x).loader(batch_size=args.batch_size)

    # The worker count is min(cores, batches) by default; pin it to --workers.
    real_devices = prediction.parallel_devices

    def pinned(gpu: object, parallel: bool) -> list[torch.device] | None:
        devices = real_devices(gpu, parallel)
        return None if devices is None else [torch.device("cpu")] * args.workers

    prediction.parallel_devices = pinned  # type: ignore[assignment]

    rows = []
    torch.set_num_threads(cores)
    seconds, reference = _time(lambda: model.predict(loader, parallel=False), args.repeats)
    rows.append((f"sequential, {cores} threads", seconds))
    torch.set_num_threads(1)
    seconds, single = _time(lambda: model.predict(loader, parallel=False), args.repeats)
    rows.append(("sequential, 1 thread", seconds))
    torch.set_num_threads(cores)
    seconds, parallel = _time(lambda: model.predict(loader, gpu=False), args.repeats)
    rows.append((f"parallel, {args.workers} processes", seconds))
    torch.testing.assert_close(single, reference)
    torch.testing.assert_close(parallel, reference)

    load = os.getloadavg()
    print(
        f"{args.batches} batches of {args.batch_size}, MLP width {args.width} depth "
        f"{args.depth}; {cores} cores; load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}\n"
    )
    print(f"| setup | seconds (best of {args.repeats}) | speed-up vs first row |")
    print("|---|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.3f} | {rows[0][1] / seconds:.2f}x |")


if __name__ == "__main__":
    main()
