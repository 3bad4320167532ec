"""Cost of agreeing on a preemption signal across ranks, under torchrun on gloo.

In a distributed run every rank polls the preemption request at each iteration boundary;
one poll in :py:data:`helios.trainer.preemption.AGREE_EVERY` starts an all-reduce of one
integer, read at the next agreement point (plus an immediate one after each save or
validation). This measures, in 2 gloo processes started by ``torchrun``:

* ``poll``: the mean time of a poll when polls follow each other with nothing in between,
  amortised over ``AGREE_EVERY`` polls: every all-reduce is waited for at once, the
  upper bound of the cost;
* ``step``: the time of one DDP training step of seed 000's network at the given batch size;
* ``in the loop``: the median step time with a poll after every step minus the median
  without, in interleaved blocks, where the all-reduce completes during the next steps;

and prints both costs per iteration as a share of the step::

    python benchmarks/bench_preemption_agreement.py [--batch-size 32] [--steps 200]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import subprocess
import sys
import time

import torch
from torch import nn

sys.path.insert(0, str(pathlib.Path(__file__).parent))

from bench_fit import Net


def worker(args: argparse.Namespace) -> None:
    from helios.core import distributed as dist
    from helios.trainer.preemption import AGREE_EVERY, Preemption

    torch.set_num_threads(1)
    dist.init_dist(backend="gloo")
    rank = torch.distributed.get_rank()
    cpu = torch.device("cpu")

    preemption = Preemption(cpu)
    polls = AGREE_EVERY * args.steps
    for _ in range(AGREE_EVERY * 4):  # warm up the connections
        preemption.poll()
    torch.distributed.barrier()
    start = time.perf_counter()
    for _ in range(polls):
        preemption.poll()
    poll_seconds = (time.perf_counter() - start) / polls
    agreement_seconds = poll_seconds * AGREE_EVERY

    net = nn.parallel.DistributedDataParallel(Net())
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
    x = torch.randn(args.batch_size, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch_size,))

    def step() -> None:
        optimizer.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()

    for _ in range(5):
        step()
    block = AGREE_EVERY * 4
    timings: dict[bool, list[float]] = {False: [], True: []}
    for index in range(2 * max(1, args.steps // block)):
        polling = index % 2 == 1
        torch.distributed.barrier()
        start = time.perf_counter()
        for _ in range(block):
            step()
            if polling:
                preemption.poll()
        timings[polling].append((time.perf_counter() - start) / block)
    step_seconds = statistics.median(timings[False])
    in_loop = statistics.median(timings[True]) - step_seconds
    if rank == 0:
        print(
            f"agreement waited at once {agreement_seconds * 1e6:.1f} us, amortised over "
            f"{AGREE_EVERY} polls {poll_seconds * 1e6:.2f} us "
            f"({poll_seconds / step_seconds:.3%} of a step); "
            f"DDP step at batch {args.batch_size}: {step_seconds * 1e3:.2f} ms; "
            f"in the loop: {in_loop * 1e6:+.1f} us per iteration "
            f"({in_loop / step_seconds:+.3%} of a step)",
            flush=True,
        )
    preemption.settle()
    dist.shutdown_dist()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        __file__, "--worker", "--batch-size", str(args.batch_size), "--steps", str(args.steps),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
