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
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import pathlib
import socket
import statistics
import subprocess
import sys
import tempfile
import time
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
    result = {
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
    """

    throughput: float
    cpu_per_sample: float
    weights: str


def _measure(setup: Setup, batch_size: int, args: argparse.Namespace) -> Measurement:
    """Run one setup in fresh processes and collect its ranks' timings."""
    worker = [
        __file__,
        "--plain-worker" if setup.plain else "--worker",
        "--samples",
        str(args.samples),
        "--epochs",
        str(args.epochs),
        "--batch-size",
        str(batch_size),
    ]
    threads = str(setup.threads)
    env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    with tempfile.TemporaryDirectory() as folder:
        if setup.processes == 1:
            command = [sys.executable, *worker, "--out", folder]
        else:
            command = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                f"--nproc_per_node={setup.processes}",
                f"--master_port={_free_port()}",
                *worker,
                "--out",
                folder,
            ]
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(
                f"error: the setup {setup.name!r} (batch {batch_size}) failed with exit code "
                f"{done.returncode}:\n{done.stdout}\n{done.stderr}"
            )
        results = [json.loads(p.read_text()) for p in pathlib.Path(folder).glob("rank*.json")]
    assert len(results) == setup.processes
    digests = {r["weights"] for r in results}
    assert len(digests) == 1, f"the ranks of {setup.name!r} ended with different weights"
    samples = sum(r["samples"] for r in results)
    return Measurement(
        throughput=samples / max(r["seconds"] for r in results),
        cpu_per_sample=sum(r["cpu_seconds"] for r in results) / samples,
        weights=digests.pop(),
    )


def main(argv: list[str]) -> int:
    """Run the benchmark (or, in a worker, one training run) and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=4096, help="training samples")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, nargs="+", default=[32, 128], help="per process")
    parser.add_argument("--repeats", type=int, default=5, help="runs per setup (best kept)")
    parser.add_argument("--ddp-only", action="store_true", help="only the 2-process setups")
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

    single = [] if args.ddp_only else SINGLE
    setups = [*single, HELIOS_DDP, PLAIN_DDP]
    runs: dict[tuple[int, str], list[Measurement]] = {}
    for repeat in range(args.repeats):
        for batch_size in args.batch_size:
            # The two DDP setups run back to back, in alternating order.
            ddp = [HELIOS_DDP, PLAIN_DDP] if repeat % 2 == 0 else [PLAIN_DDP, HELIOS_DDP]
            for setup in [*single, *ddp]:
                measurement = _measure(setup, batch_size, args)
                runs.setdefault((batch_size, setup.name), []).append(measurement)

    def best(batch_size: int, setup: Setup) -> float:
        return max(m.throughput for m in runs[(batch_size, setup.name)])

    def least_cpu(batch_size: int, setup: Setup) -> float:
        return min(m.cpu_per_sample for m in runs[(batch_size, setup.name)])

    print(
        f"{args.samples} samples x {args.epochs} epochs, best of {args.repeats}, "
        f"{os.cpu_count()} CPU(s)\n"
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
