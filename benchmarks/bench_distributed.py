"""Training throughput of helios ``Trainer.fit`` on 2 CPU processes (gloo) against 1.

The network and data are those of ``bench_fit.py``: seed 000's tutorial ``Net`` on synthetic
CIFAR-shaped data (3x32x32 random images, 10 classes), SGD with momentum, shuffled batches.
Every setup trains the same number of epochs over the same data with the same batch size per
process; with 2 processes each rank trains on its half of every epoch (the distributed
resumable sampler) and the net is wrapped in ``DistributedDataParallel``, so every step also
all-reduces the gradients over gloo.

Throughput is samples per second of the training loop, from ``Model.on_training_start`` to
``Model.on_training_end`` (process start-up, imports and the process group set-up are
excluded): all samples trained by all ranks, divided by the slowest rank's loop time. Each
setup runs in fresh processes; the best of ``--repeats`` runs is reported. The setups:

* 1 process, 1 torch thread;
* 1 process, 2 torch threads (the same cores as 2 processes, used by intra-op threads);
* 2 processes under ``torchrun`` (gloo, ``use_cpu=True``), 1 torch thread each.

Usage (from the repository root)::

    python benchmarks/bench_distributed.py
    python benchmarks/bench_distributed.py --samples 8192 --epochs 2 --batch-size 64 256

It prints a markdown table. On a machine with fewer than 2 free cores the 2-process row
measures contention, not scaling.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 - the tutorial's spelling
from torch import nn
from torch.utils import data as tud

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


class SyntheticData(hld.DataModule):
    """Random CIFAR-shaped images with random labels."""

    def __init__(self, num_samples: int, batch_size: int) -> None:
        super().__init__()
        self.num_samples = num_samples
        self.batch_size = batch_size

    def setup(self) -> None:
        generator = torch.Generator().manual_seed(0)
        images = torch.randn((self.num_samples, 3, 32, 32), generator=generator)
        labels = torch.randint(0, 10, (self.num_samples,), generator=generator)
        params = hld.DataLoaderParams(batch_size=self.batch_size, shuffle=True, drop_last=True)
        self._train_dataset = self._create_dataset(tud.TensorDataset(images, labels), params)


class Classifier(hlm.Model):
    """Trains ``Net`` with cross-entropy; times its own training loop."""

    def __init__(self) -> None:
        super().__init__("bench")
        self.samples = 0
        self.started = 0.0
        self.elapsed = 0.0

    def setup(self, fast_init: bool = False) -> None:
        self.net: nn.Module = Net().to(self.device)
        if self.is_distributed:
            self.net = nn.parallel.DistributedDataParallel(self.net)
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=LR, momentum=MOMENTUM)

    def train(self) -> None:
        self.net.train()

    def on_training_start(self) -> None:
        self.started = time.perf_counter()

    def train_step(self, batch: Any, state: hlt.TrainingState) -> None:
        images, labels = batch
        self.optimizer.zero_grad()
        loss = F.cross_entropy(self.net(images), labels)
        loss.backward()
        self.optimizer.step()
        self.samples += len(labels)

    def on_training_end(self) -> None:
        self.elapsed = time.perf_counter() - self.started


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
    result = {"samples": model.samples, "seconds": model.elapsed}
    (out / f"rank{trainer.rank}.json").write_text(json.dumps(result))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("localhost", 0))
        return int(sock.getsockname()[1])


def _measure(processes: int, threads: int, batch_size: int, args: argparse.Namespace) -> float:
    """Run one setup in fresh processes; return its throughput in samples per second."""
    worker = [
        __file__,
        "--worker",
        "--samples",
        str(args.samples),
        "--epochs",
        str(args.epochs),
        "--batch-size",
        str(batch_size),
    ]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    with tempfile.TemporaryDirectory() as folder:
        if processes == 1:
            command = [sys.executable, *worker, "--out", folder]
        else:
            command = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                f"--nproc_per_node={processes}",
                f"--master_port={_free_port()}",
                *worker,
                "--out",
                folder,
            ]
        subprocess.run(command, env=env, check=True, capture_output=True)
        results = [json.loads(p.read_text()) for p in pathlib.Path(folder).glob("rank*.json")]
    assert len(results) == processes
    return sum(r["samples"] for r in results) / max(r["seconds"] for r in results)


def main(argv: list[str]) -> int:
    """Run the benchmark (or, with ``--worker``, one training run) and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=4096, help="training samples")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, nargs="+", default=[32, 128], help="per process")
    parser.add_argument("--repeats", type=int, default=2, help="runs per setup (best kept)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=pathlib.Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        run_worker(args.out, args.samples, args.epochs, args.batch_size[0])
        return 0

    setups = [
        ("1 process, 1 thread", 1, 1),
        ("1 process, 2 threads", 1, 2),
        ("2 processes (torchrun, gloo), 1 thread each", 2, 1),
    ]
    best: dict[tuple[int, str], float] = {}
    for _ in range(args.repeats):
        for batch_size in args.batch_size:
            for name, processes, threads in setups:
                throughput = _measure(processes, threads, batch_size, args)
                key = (batch_size, name)
                best[key] = max(best.get(key, 0.0), throughput)

    print(
        f"{args.samples} samples x {args.epochs} epochs, best of {args.repeats}, "
        f"{os.cpu_count()} CPU(s)\n"
    )
    print("| batch per process | setup | samples/s | vs 1 process, 1 thread |")
    print("|---:|---|---:|---:|")
    for batch_size in args.batch_size:
        base = best[(batch_size, setups[0][0])]
        for name, _, _ in setups:
            value = best[(batch_size, name)]
            print(f"| {batch_size} | {name} | {value:.0f} | {value / base:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
