"""Count pyblaze ``fit``'s instructions per iteration against a plain PyTorch loop.

The same workload and method as ``bench_fit.py`` (whose machinery this script imports):
seed 000's tutorial network (``Net``) on synthetic CIFAR-shaped data, one epoch, batch 4,
one torch thread, on the CPU, SGD with momentum, cross-entropy loss.

* pyblaze: ``SupervisedEngine.train`` (what ``Estimator.fit`` calls) on a shuffled
  ``DataLoader`` with ``drop_last``, no callbacks, no validation, ``gpu=False``.
* plain: ``bench_fit.run_plain``, the loop a PyTorch user writes, body inline in the
  ``for``.

Each side runs in its own process under ``valgrind --tool=callgrind --instr-atstart=no``.
The worker first runs a short warm-up of both sides (the same heap history in both
processes), then stops right before its loop and waits; the benchmark switches counting on
with ``callgrind_control -i on <pid>``, lets the loop run and switches counting off after
it. For pyblaze the stops are the engine's ``before_training`` and ``after_training`` hooks
(the engine is the first callback; it runs them from the helios model's
``on_training_start`` and ``on_training_end``). Runs of N and 2N steps are counted and
``(I(2N) - I(N)) / N`` cancels every cost that does not grow with the number of steps.

``--cprofile`` runs the pyblaze side once under :py:mod:`cProfile` (no valgrind) and prints
the functions called most often per batch, to find per-batch work.

Usage (from the repository root; the callgrind part takes several minutes)::

    python benchmarks/bench_pyblaze_fit.py --callgrind-steps 100
    python benchmarks/bench_pyblaze_fit.py --cprofile --steps 500

Target at batch 4: instructions per iteration <= 1.01x the plain loop's. See
``benchmarks/README.md`` for the measured numbers.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pathlib
import pstats
import shutil
import sys
from collections.abc import Callable
from typing import Any

import bench_fit
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

TARGET = 1.01
SIDES = ("pyblaze", "plain")


def run_pyblaze(
    dataset: Dataset,
    batch_size: int,
    on_ready: Callable[[], None] = bench_fit._noop,
    on_done: Callable[[], None] = bench_fit._noop,
) -> None:
    """``SupervisedEngine.train`` for one epoch over ``dataset``, no callbacks."""
    import pyblaze.nn as xnn

    class BenchEngine(xnn.SupervisedEngine):
        def before_training(self, model: nn.Module, num_epochs: int) -> None:
            super().before_training(model, num_epochs)
            on_ready()

        def after_training(self) -> None:
            on_done()
            super().after_training()

    torch.manual_seed(bench_fit.SEED)  # fit draws its run's seed from torch's generator
    net = bench_fit.Net()
    engine = BenchEngine(net)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True)
    optimizer = torch.optim.SGD(net.parameters(), lr=bench_fit.LR, momentum=bench_fit.MOMENTUM)
    engine.train(loader, epochs=1, optimizer=optimizer, loss=nn.CrossEntropyLoss(), gpu=False)


def callgrind_worker(args: argparse.Namespace) -> None:
    """Run one side for ``args.steps`` steps, pausing around the loop for the toggles."""
    bench_fit._one_thread()
    if args.warmup:
        # The same heap history for both sides (see bench_fit.callgrind_worker).
        warm = bench_fit.make_dataset(args.warmup * args.batch_size)
        run_pyblaze(warm, args.batch_size)
        bench_fit.run_plain(warm, args.batch_size, False)
    dataset = bench_fit.make_dataset(args.steps * args.batch_size)

    ready, done = bench_fit.handshake("@@READY"), bench_fit.handshake("@@DONE")
    if args.side == "pyblaze":
        run_pyblaze(dataset, args.batch_size, ready, done)
    else:
        bench_fit.run_plain(dataset, args.batch_size, False, ready, done)


def profile(args: argparse.Namespace) -> str:
    """Profile the pyblaze side's loop with cProfile; list calls per batch."""
    bench_fit._one_thread()
    dataset = bench_fit.make_dataset(args.steps * args.callgrind_batch_size)
    profiler = cProfile.Profile()
    run_pyblaze(dataset, args.callgrind_batch_size, profiler.enable, profiler.disable)
    stats: Any = pstats.Stats(profiler)
    rows = []
    for (file, line, name), entry in stats.stats.items():
        calls, total_time = entry[1], entry[2]
        if calls >= args.steps:
            rows.append(
                (calls / args.steps, total_time, f"{pathlib.Path(file).name}:{line}({name})")
            )
    rows.sort(key=lambda row: (-row[0], -row[1]))
    lines = [f"{'calls/batch':>11}  {'self s':>8}  function"]
    lines += [f"{calls:11.2f}  {seconds:8.4f}  {where}" for calls, seconds, where in rows]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--callgrind-steps", type=int, default=100, help="N (2N is run too)")
    parser.add_argument("--callgrind-batch-size", type=int, default=4)
    parser.add_argument(
        "--warmup", type=int, default=20, help="steps of both sides run before the counted run"
    )
    parser.add_argument("--keep-callgrind", help="copy the callgrind files into this folder")
    parser.add_argument("--cprofile", action="store_true", help="profile the pyblaze side")
    # Internal (the callgrind child processes), and --steps for --cprofile.
    parser.add_argument("--steps", type=int, default=500, help=argparse.SUPPRESS)
    parser.add_argument("--worker", choices=("callgrind",), help=argparse.SUPPRESS)
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    # Passed to every worker by bench_fit._count_instructions; only the defaults run here.
    parser.add_argument("--unit", choices=("epoch",), default="epoch", help=argparse.SUPPRESS)
    parser.add_argument(
        "--plain-body", choices=("inline",), default="inline", help=argparse.SUPPRESS
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.cprofile:
        print(profile(args))
        return 0
    if args.worker is not None:
        callgrind_worker(args)
        return 0
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("callgrind: valgrind is not installed")
        return 1
    print(
        f"torch {torch.__version__}, 1 thread, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    if args.keep_callgrind:
        pathlib.Path(args.keep_callgrind).mkdir(parents=True, exist_ok=True)
    counts = bench_fit.measure_callgrind(args, SIDES, str(pathlib.Path(__file__).resolve()))
    table = bench_fit.callgrind_table(
        counts, args.callgrind_steps, args.callgrind_batch_size, SIDES, TARGET
    )
    print(f"\n## Instructions (callgrind, batch {args.callgrind_batch_size})\n\n{table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
