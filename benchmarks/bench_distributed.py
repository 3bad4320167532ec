"""Training throughput of helios ``Trainer.fit`` on 2 CPU processes (gloo) against 1, and
against a hand-written DDP loop on the same 2 processes.

The network and data are those of ``bench_fit.py``: seed 000's tutorial ``Net`` on synthetic
CIFAR-shaped data (3x32x32 random images, 10 classes), SGD with momentum, shuffled batches.
Every setup trains the same number of epochs over the same data with the same batch size per
process; with 2 processes each rank trains on its half of every epoch and the net is wrapped
in ``DistributedDataParallel``, so every step also all-reduces the gradients over gloo.

Throughput is samples per second of the training loop: all samples trained by all ranks,
divided by the slowest rank's loop time. Process start-up, imports and the process group
set-up are excluded. Each setup runs in fresh processes; the best of ``--repeats`` runs is
reported. The setups:

* 1 process, 1 torch thread (helios);
* 1 process, 2 torch threads (helios; the same cores as 2 processes, used by intra-op
  threads);
* helios DDP: ``Trainer.fit`` in 2 processes under ``torchrun`` (gloo, ``use_cpu=True``),
  1 torch thread each. The loop is timed from ``Model.on_training_start`` to
  ``Model.on_training_end``, so it includes what the Trainer does in between besides the
  batches: building the training loader, the epoch boundaries, the preemption agreement
  (an all-reduce of one integer every 16 batches) and the end-of-run checks;
* hand-written DDP, the control: 2 processes under ``torchrun`` (gloo, 1 torch thread each)
  running the loop a PyTorch user writes: ``init_process_group("gloo")``, ``DDP(Net())``,
  the same SGD optimizer, and a ``DataLoader`` over the same ``TensorDataset`` with torch's
  ``DistributedSampler`` (shuffled, ``drop_last``, helios' default seed, ``set_epoch(e)``
  for epochs 0, 1, ...), the same batch size, ``drop_last`` and ``num_workers=0`` (the
  helios setups' loader settings); the body is ``zero_grad``, forward, ``cross_entropy``,
  ``backward``, ``step``. Timed from right before the epoch loop to right after it (the
  model, optimizer and loader are built before).

Both DDP setups do the very same work: helios' distributed sampler is a subclass of
``DistributedSampler`` with the same seed + epoch order, so every rank gets the same shard
of every epoch, and the hand-written net is built right after seeding torch with helios'
default seed, as the Trainer does. Each run reports a digest of its final weights; the
ranks of a run must agree, and the summary says whether the two DDP setups ended with
identical weights (they do: same data, same order, same updates).

The two 2-process setups run back to back, alternating which goes first (helios then
hand-written, then hand-written then helios, ...), so that drift on a shared machine hits
both alike. The column "vs hand-written DDP" is a 2-process setup's best throughput over
the hand-written loop's best (goal for helios: >= 0.98x). Below the table, per batch size:
the ratio of each helios run to the hand-written run next to it and their median (steadier
than the ratio of the bests on a busy machine), and the ratio of the CPU times. The column
"CPU us per sample" is the CPU time (user + system, all threads) of every rank's process
during its loop, summed over ranks, per sample, the least of the runs: it counts what the
processes computed and not the time they waited for a core, so it separates the work done
(helios' own included) from contention, though on a busy machine it still moves by up to
about 10% between runs of the same code.

Usage (from the repository root)::

    python benchmarks/bench_distributed.py
    python benchmarks/bench_distributed.py --samples 8192 --epochs 2 --batch-size 64 256
    python benchmarks/bench_distributed.py --repeats 9 --ddp-only

``--ddp-only`` runs just the two 2-process setups. It prints a markdown table. On a machine
with fewer than 2 free cores the 2-process rows measure contention, not scaling.

Two more modes (both need root for the simulated hosts, see ``tests/cluster/sim_hosts.py``,
or valgrind):

* ``--nodes 2``: the two DDP setups with their 2 processes on 2 simulated hosts (network
  namespaces with their own addresses and hostnames, joined by a bridge), 1 process each,
  started on every node by ``torchrun --nnodes=2 --rdzv-backend=c10d`` as in
  ``docs/howto/cluster.md``; interleaved as above. The gradients then travel over a veth
  pair and a bridge instead of the loopback device.
* ``--callgrind``: instructions instead of time, on rank 0 only, which runs under
  ``valgrind --tool=callgrind --instr-atstart=no`` and switches counting on
  (``callgrind_control -i on``) where the timed loop starts and off where it ends. Every DDP
  setup runs with ``--epochs`` and with twice as many; the difference is the cost of
  ``--epochs`` epochs without any start-up or end cost, printed per sample with the ratio
  helios / hand-written. Instructions do not count time spent waiting for the other rank
  (which valgrind makes the faster one), so the figure is what rank 0 computes.
  With ``--nodes 2`` the ranks run on the simulated hosts.

Usage of those::

    python benchmarks/bench_distributed.py --ddp-only --nodes 2 --repeats 6
    python benchmarks/bench_distributed.py --callgrind --samples 1024 --epochs 1 --batch-size 32
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import importlib.util
import json
import os
import pathlib
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 - the tutorial's spelling
from torch import nn
from torch.utils import data as tud

import helios.core.rng as hlr
import helios.data as hld
import helios.model as hlm
import helios.trainer as hlt

LR = 0.001
MOMENTUM = 0.9


class Net(nn.Module):
    """The network of PyTorch's "Training a Classifier" tutorial (seed 000)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)  # type: ignore[no-any-return]


def make_dataset(num_samples: int) -> tud.TensorDataset:
    """Random CIFAR-shaped images with random labels (the same in every process)."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn((num_samples, 3, 32, 32), generator=generator)
    labels = torch.randint(0, 10, (num_samples,), generator=generator)
    return tud.TensorDataset(images, labels)


def weights_digest(net: nn.Module) -> str:
    """A short hash of the network's weights (to check that two setups did the same work)."""
    digest = hashlib.sha256()
    for tensor in net.state_dict().values():
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class SyntheticData(hld.DataModule):
    """:py:func:`make_dataset` in shuffled batches (``drop_last``, no loader workers)."""

    def __init__(self, num_samples: int, batch_size: int) -> None:
        super().__init__()
        self.num_samples = num_samples
        self.batch_size = batch_size

    def setup(self) -> None:
        params = hld.DataLoaderParams(batch_size=self.batch_size, shuffle=True, drop_last=True)
        self._train_dataset = self._create_dataset(make_dataset(self.num_samples), params)


class Classifier(hlm.Model):
    """Trains ``Net`` with cross-entropy; times its own training loop."""

    def __init__(self) -> None:
        super().__init__("bench")
        self.samples = 0
        self.started = self.cpu_started = 0.0
        self.elapsed = self.cpu_seconds = 0.0

    def setup(self, fast_init: bool = False) -> None:
        self.net: nn.Module = Net().to(self.device)
        if self.is_distributed:
            self.net = nn.parallel.DistributedDataParallel(self.net)
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=LR, momentum=MOMENTUM)

    def train(self) -> None:
        self.net.train()

    def on_training_start(self) -> None:
        count_instructions(True)
        self.started = time.perf_counter()
        self.cpu_started = time.process_time()

    def train_step(self, batch: Any, state: hlt.TrainingState) -> None:
        images, labels = batch
        self.optimizer.zero_grad()
        loss = F.cross_entropy(self.net(images), labels)
        loss.backward()
        self.optimizer.step()
        self.samples += len(labels)

    def on_training_end(self) -> None:
        self.elapsed = time.perf_counter() - self.started
        self.cpu_seconds = time.process_time() - self.cpu_started
        count_instructions(False)


def count_instructions(on: bool) -> None:
    """Switch callgrind's counting on or off in this process, if it runs under callgrind."""
    if os.environ.get("BENCH_CALLGRIND") and os.environ.get("RANK", "0") == "0":
        done = subprocess.run(
            ["callgrind_control", "-i", "on" if on else "off", str(os.getpid())],
            capture_output=True,
            text=True,
        )
        # callgrind_control exits with 0 even when it did not reach the process.
        if done.returncode != 0 or "Error" in done.stdout + done.stderr:
            raise RuntimeError(f"error: callgrind_control failed: {done.stdout}{done.stderr}")


def run_worker(out: pathlib.Path, samples: int, epochs: int, batch_size: int) -> None:
    """Train once in this process (a torchrun worker or a single process); write timings."""
    trainer = hlt.Trainer(
        run_name="bench",
        train_unit="epoch",
        total_steps=epochs,
        use_cpu=True,
        print_banner=False,
    )
    model = Classifier()
    if not trainer.fit(model, SyntheticData(samples, batch_size)):
        raise SystemExit(1)
    net = (
        model.net.module
        if isinstance(model.net, nn.parallel.DistributedDataParallel)
        else model.net
    )
    result = {
        "rank": trainer.rank,
        "samples": model.samples,
        "seconds": model.elapsed,
        "cpu_seconds": model.cpu_seconds,
        "weights": weights_digest(net),
    }
    (out / f"rank{trainer.rank}.json").write_text(json.dumps(result))


def run_plain_ddp_worker(out: pathlib.Path, samples: int, epochs: int, batch_size: int) -> None:
    """The control: the DDP loop a PyTorch user writes by hand (a torchrun worker)."""
    torch.distributed.init_process_group("gloo")
    rank = torch.distributed.get_rank()
    torch.manual_seed(hlr.get_default_seed())  # the Trainer's seed, so the same initial weights
    dataset = make_dataset(samples)
    sampler = tud.DistributedSampler(
        dataset, shuffle=True, seed=hlr.get_default_seed(), drop_last=True
    )
    loader = tud.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, drop_last=True, num_workers=0
    )
    model = nn.parallel.DistributedDataParallel(Net())
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    model.train()
    trained = 0
    count_instructions(True)
    started, cpu_started = time.perf_counter(), time.process_time()
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for images, labels in loader:
            optimizer.zero_grad()
            loss = F.cross_entropy(model(images), labels)
            loss.backward()
            optimizer.step()
            trained += len(labels)
    elapsed, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    count_instructions(False)
    result = {
        "rank": rank,
        "samples": trained,
        "seconds": elapsed,
        "cpu_seconds": cpu_seconds,
        "weights": weights_digest(model.module),
    }
    (out / f"rank{rank}.json").write_text(json.dumps(result))
    torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("localhost", 0))
        return int(sock.getsockname()[1])


@dataclasses.dataclass(frozen=True)
class Setup:
    """One row of the table: who trains, in how many processes, with how many threads."""

    name: str
    processes: int
    threads: int
    plain: bool = False


SINGLE = [
    Setup("1 process, 1 thread", 1, 1),
    Setup("1 process, 2 threads", 1, 2),
]
HELIOS_DDP = Setup("helios DDP: 2 processes (torchrun, gloo), 1 thread each", 2, 1)
PLAIN_DDP = Setup("hand-written DDP: 2 processes (torchrun, gloo), 1 thread each", 2, 1, True)


@dataclasses.dataclass(frozen=True)
class Measurement:
    """One run of a setup.

    Attributes:
        throughput: samples per second (all ranks' samples over the slowest rank's loop time).
        cpu_per_sample: CPU seconds of all ranks' processes during their loops, per sample.
        weights: the digest of the final weights (the same on every rank).
        instructions: the instructions of rank 0's loop (``--callgrind`` only).
        rank0_samples: the samples rank 0 trained.
    """

    throughput: float
    cpu_per_sample: float
    weights: str
    instructions: int = 0
    rank0_samples: int = 0


# Runs rank 0 under callgrind, with counting off until the worker switches it on.
_CALLGRIND_WRAPPER = """#!/bin/sh
if [ "$RANK" = 0 ]; then
    exec valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$BENCH_CALLGRIND" "$@"
fi
exec "$@"
"""


def _run_job(
    commands: dict[int | None, list[str]], env: dict[str, str], hosts: Any, name: str
) -> None:
    """Run a job's command(s): one here (key None), or one per simulated node (key = node)."""
    if None in commands:
        done = subprocess.run(commands[None], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"error: {name} failed ({done.returncode}):\n{done.stderr}")
        return
    with tempfile.TemporaryDirectory() as logs:
        procs = {
            node: hosts.popen(node, command, pathlib.Path(logs) / f"{node}.log", env=env)
            for node, command in commands.items()
        }
        codes = {node: proc.wait() for node, proc in procs.items()}
        if any(codes.values()):
            text = "\n".join((pathlib.Path(logs) / f"{n}.log").read_text() for n in procs)
            raise RuntimeError(f"error: {name} failed ({codes}):\n{text[-6000:]}")


def _job_commands(
    setup: Setup, worker: list[str], folder: str, hosts: Any, callgrind: str | None
) -> dict[int | None, list[str]]:
    launch = [sys.executable, "-m", "torch.distributed.run"]
    if setup.processes == 1:
        return {None: [sys.executable, *worker, "--out", folder]}
    program = [*worker, "--out", folder]  # torchrun adds the interpreter
    if callgrind is not None:
        wrapper = pathlib.Path(folder) / "rank0_under_callgrind.sh"
        wrapper.write_text(_CALLGRIND_WRAPPER)
        wrapper.chmod(0o755)
        launch.append("--no-python")
        program = [str(wrapper), sys.executable, *program]
    if hosts is None:
        launch += [f"--nproc_per_node={setup.processes}", f"--master_port={_free_port()}"]
        return {None: [*launch, *program]}
    port = _free_port()
    rendezvous = [
        "--nnodes=2",
        "--nproc-per-node=1",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={hosts.hostname(0)}:{port}",
        f"--rdzv-id=bench{port}",
    ]
    return {node: [*launch, *rendezvous, *program] for node in range(2)}


def _measure(
    setup: Setup,
    batch_size: int,
    args: argparse.Namespace,
    hosts: Any = None,
    epochs: int | None = None,
) -> Measurement:
    """Run one setup in fresh processes and collect its ranks' timings.

    With ``args.callgrind``, rank 0 runs under callgrind and the measurement also holds the
    instructions of its loop.
    """
    worker = [
        __file__,
        "--plain-worker" if setup.plain else "--worker",
        "--samples",
        str(args.samples),
        "--epochs",
        str(epochs or args.epochs),
        "--batch-size",
        str(batch_size),
    ]
    threads = str(setup.threads)
    env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    # A shared folder when the ranks are on simulated hosts (they all see it).
    base = str(hosts.shared) if hosts is not None else None
    with tempfile.TemporaryDirectory(dir=base) as folder:
        callgrind = str(pathlib.Path(folder) / "callgrind.out") if args.callgrind else None
        if callgrind is not None:
            env["BENCH_CALLGRIND"] = callgrind
        commands = _job_commands(setup, worker, folder, hosts, callgrind)
        _run_job(commands, env, hosts, f"the setup {setup.name!r} (batch {batch_size})")
        results = [json.loads(p.read_text()) for p in pathlib.Path(folder).glob("rank*.json")]
        instructions = _callgrind_total(pathlib.Path(callgrind)) if callgrind else 0
    assert len(results) == setup.processes
    digests = {r["weights"] for r in results}
    assert len(digests) == 1, f"the ranks of {setup.name!r} ended with different weights"
    samples = sum(r["samples"] for r in results)
    return Measurement(
        throughput=samples / max(r["seconds"] for r in results),
        cpu_per_sample=sum(r["cpu_seconds"] for r in results) / samples,
        weights=digests.pop(),
        instructions=instructions,
        rank0_samples=next(r["samples"] for r in results if r.get("rank", 0) == 0),
    )


def _callgrind_total(path: pathlib.Path) -> int:
    """The instructions (Ir) callgrind counted in its output file."""
    # "summary:" can stay 0 when counting starts switched off; "totals:" has the count.
    for line in path.read_text().splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1])
    raise RuntimeError(f"error: no totals in {path}")


def main(argv: list[str]) -> int:
    """Run the benchmark (or, in a worker, one training run) and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=4096, help="training samples")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, nargs="+", default=[32, 128], help="per process")
    parser.add_argument("--repeats", type=int, default=5, help="runs per setup (best kept)")
    parser.add_argument("--ddp-only", action="store_true", help="only the 2-process setups")
    parser.add_argument(
        "--nodes", type=int, choices=[1, 2], default=1, help="hosts of the DDP setups"
    )
    parser.add_argument(
        "--callgrind", action="store_true", help="count rank 0's instructions instead"
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--plain-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=pathlib.Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        run_worker(args.out, args.samples, args.epochs, args.batch_size[0])
        return 0
    if args.plain_worker:
        run_plain_ddp_worker(args.out, args.samples, args.epochs, args.batch_size[0])
        return 0

    with contextlib.ExitStack() as stack:
        hosts = None
        if args.nodes == 2:
            hosts = stack.enter_context(_simulated_hosts())
        if args.callgrind:
            return _count_instructions(args, hosts)
        return _time_setups(args, hosts)


@contextlib.contextmanager
def _simulated_hosts() -> Iterator[Any]:
    """Two simulated hosts (the cluster tests' network namespaces), removed afterwards."""
    path = pathlib.Path(__file__).resolve().parents[1] / "tests" / "cluster" / "sim_hosts.py"
    spec = importlib.util.spec_from_file_location("sim_hosts", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    reason = module.available()
    if reason is not None:
        raise SystemExit(f"error: --nodes 2 {reason}")
    with tempfile.TemporaryDirectory() as folder, module.SimHosts(2, pathlib.Path(folder)) as hosts:
        yield hosts


def _count_instructions(args: argparse.Namespace, hosts: Any) -> int:
    """Instructions of rank 0's loop per sample, helios DDP against hand-written DDP."""
    where = "2 simulated hosts, 1 process each" if hosts is not None else "1 host, 2 processes"
    print(
        f"callgrind, rank 0; {args.samples} samples, I({2 * args.epochs} epochs) - "
        f"I({args.epochs} epochs); {where}\n"
    )
    print("| batch per process | setup | instructions per sample (rank 0) |")
    print("|---:|---|---:|")
    for batch_size in args.batch_size:
        per_sample = {}
        for setup in (HELIOS_DDP, PLAIN_DDP):
            short = _measure(setup, batch_size, args, hosts, args.epochs)
            long = _measure(setup, batch_size, args, hosts, 2 * args.epochs)
            samples = long.rank0_samples - short.rank0_samples
            per_sample[setup.name] = (long.instructions - short.instructions) / samples
            print(f"| {batch_size} | {setup.name} | {per_sample[setup.name]:,.0f} |")
        ratio = per_sample[HELIOS_DDP.name] / per_sample[PLAIN_DDP.name]
        print(f"\nbatch {batch_size}: helios DDP / hand-written DDP instructions: {ratio:.4f}\n")
    return 0


def _time_setups(args: argparse.Namespace, hosts: Any) -> int:
    """The timed table (see the module docstring)."""
    single = [] if args.ddp_only or hosts is not None else SINGLE
    setups = [*single, HELIOS_DDP, PLAIN_DDP]
    runs: dict[tuple[int, str], list[Measurement]] = {}
    for repeat in range(args.repeats):
        for batch_size in args.batch_size:
            # The two DDP setups run back to back, in alternating order.
            ddp = [HELIOS_DDP, PLAIN_DDP] if repeat % 2 == 0 else [PLAIN_DDP, HELIOS_DDP]
            for setup in [*single, *ddp]:
                measurement = _measure(setup, batch_size, args, hosts)
                runs.setdefault((batch_size, setup.name), []).append(measurement)

    def best(batch_size: int, setup: Setup) -> float:
        return max(m.throughput for m in runs[(batch_size, setup.name)])

    def least_cpu(batch_size: int, setup: Setup) -> float:
        return min(m.cpu_per_sample for m in runs[(batch_size, setup.name)])

    where = "; DDP on 2 simulated hosts, 1 process each" if hosts is not None else ""
    print(
        f"{args.samples} samples x {args.epochs} epochs, best of {args.repeats}, "
        f"{os.cpu_count()} CPU(s){where}\n"
    )
    print(
        "| batch per process | setup | samples/s | vs 1 process, 1 thread "
        "| vs hand-written DDP | CPU us per sample |"
    )
    print("|---:|---|---:|---:|---:|---:|")
    for batch_size in args.batch_size:
        base = best(batch_size, SINGLE[0]) if single else None
        control = best(batch_size, PLAIN_DDP)
        for setup in setups:
            value = best(batch_size, setup)
            vs_single = f"{value / base:.2f}x" if base else ""
            vs_control = f"{value / control:.3f}x" if setup.processes == 2 else ""
            cpu = least_cpu(batch_size, setup) * 1e6
            print(
                f"| {batch_size} | {setup.name} | {value:.0f} | {vs_single} | {vs_control} "
                f"| {cpu:.1f} |"
            )
    print()
    for batch_size in args.batch_size:
        helios, plain = runs[(batch_size, HELIOS_DDP.name)], runs[(batch_size, PLAIN_DDP.name)]
        ratios = [h.throughput / p.throughput for h, p in zip(helios, plain, strict=True)]
        listed = ", ".join(f"{ratio:.3f}" for ratio in ratios)
        cpu_ratio = least_cpu(batch_size, HELIOS_DDP) / least_cpu(batch_size, PLAIN_DDP)
        same = {m.weights for m in helios} == {m.weights for m in plain}
        print(
            f"batch {batch_size}: helios DDP / hand-written DDP throughput, run by run: "
            f"{listed} (median {statistics.median(ratios):.3f}); CPU time per sample "
            f"{cpu_ratio:.3f}x; final weights {'identical' if same else 'DIFFERENT'}."
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
