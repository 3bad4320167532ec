"""Time training is blocked per sharded checkpoint: asynchronous against synchronous saves.

Two ``torchrun`` processes on gloo (CPU) shard an MLP of about ``--params`` weights with
FSDP2 (``fully_shard``; each rank holds half). Each save writes every rank's shards the way
a sharded run's checkpoint does (:py:mod:`helios.trainer.checkpoint.sharded`): synchronously
(``write_shards``: Distributed Checkpoint's ``save`` into the checkpoint's temporary
folder) or asynchronously (``start_shards_in_background``: Distributed Checkpoint's
``async_save`` on a process group of its own; the rank is blocked only while the shards are
copied to CPU memory). Between saves each rank trains ``--steps`` steps, so a background
write overlaps training as in a run; the blocked time is the time inside the save call
(plus, for the asynchronous mode, any wait for the previous save at the next one). The
first save of each mode is left out (first-touch page faults).

Usage (from the repository root)::

    python benchmarks/bench_async_sharded_save.py

Goal: blocked time of an asynchronous sharded save <= 30% of the synchronous one.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time


def worker(args: argparse.Namespace) -> None:
    """One rank: shard the network, save in both modes, print the blocked times (rank 0)."""
    import torch
    import torch.distributed as dist
    from torch import nn
    from torch.distributed.fsdp import fully_shard

    from helios.trainer.checkpoint.sharded import start_shards_in_background, write_shards
    from helios.trainer.checkpoint.storage import LocalFolder

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    width = int(math.sqrt(args.params / args.layers))
    torch.manual_seed(0)
    net = nn.Sequential(*(nn.Linear(width, width) for _ in range(args.layers)))
    for layer in net:
        fully_shard(layer)
    fully_shard(net)
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-6)
    batch = torch.ones(8, width)
    folder = LocalFolder(pathlib.Path(args.dir))
    results: dict[str, list[float]] = {"sync": [], "async": []}
    in_flight = None
    for mode in ("sync", "async"):
        for save in range(args.saves):
            for _ in range(args.steps):
                optimizer.zero_grad()
                net(batch).square().mean().backward()
                optimizer.step()
            name = f"bench_epoch_1_iter_{save}_{mode}.dcp"
            states = {"model": net.state_dict()}
            dist.barrier()
            started = time.perf_counter()
            if in_flight is not None:
                in_flight.wait()
                in_flight = None
            if mode == "sync":
                write_shards(states, folder.shard_writer(name))
            else:
                in_flight = start_shards_in_background(states, folder.shard_writer(name), name)
            results[mode].append(time.perf_counter() - started)
        if in_flight is not None:
            in_flight.wait()
            in_flight = None
    if rank == 0:
        print("RESULT " + json.dumps(results), flush=True)
    dist.barrier()
    dist.destroy_process_group()


def _free_port() -> int:
    """A TCP port free on localhost now (torchrun's static rendezvous needs a real one)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=float, default=100e6, help="about this many weights")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--saves", type=int, default=4, help="saves per mode")
    parser.add_argument("--steps", type=int, default=2, help="training steps between saves")
    parser.add_argument("--dir", default=None, help="where to write")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    root = tempfile.mkdtemp(prefix="bench_sharded_", dir=args.dir)
    try:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            f"--master_port={_free_port()}",
            __file__,
            "--worker",
            f"--params={args.params}",
            f"--layers={args.layers}",
            f"--saves={args.saves}",
            f"--steps={args.steps}",
            f"--dir={root}",
        ]
        done = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ))
        if done.returncode != 0:
            print(done.stdout[-3000:] + done.stderr[-5000:])
            return 1
    finally:
        shutil.rmtree(root, ignore_errors=True)
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    results = json.loads(line.removeprefix("RESULT "))
    for mode, times in results.items():
        print(f"{mode:5s}: blocked per save " + ", ".join(f"{t:.3f}" for t in times) + " s")
    sync = statistics.median(results["sync"][1:])
    asynchronous = statistics.median(results["async"][1:])
    print(f"2 processes, about {args.params / 1e6:.0f}M parameters (half per rank)")
    print(f"sync sharded save (median): {sync:.3f} s; async blocked (median): {asynchronous:.3f} s")
    print(f"async blocked / sync sharded save: {asynchronous / sync:.1%} (goal <= 30%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
