"""Mixed precision with the Model helpers against a hand-written autocast loop.

Both sides train seed 000's tutorial network (``bench_fit.Net``) on ``bench_fit``'s
synthetic CIFAR-shaped data with the same loader, SGD optimizer and number of steps:

* helios: ``Trainer.fit`` with ``precision=...`` and a ``Model`` whose ``train_step`` is
  written with the helpers (``autocast``, ``backward``, ``optimizer_step``), the same code at
  every precision.
* plain: the loop a PyTorch user writes: ``torch.autocast`` around the forward and the loss,
  and at fp16 a ``torch.amp.GradScaler`` (``scale(loss).backward()``, ``step``, ``update``).

Two measurements:

* CPU, instructions per iteration with callgrind, ``bf16-mixed``, batch 4, one torch
  thread. This reuses ``bench_fit.py``'s machinery (its ``_count_instructions`` runs this
  file's worker under ``valgrind --tool=callgrind --instr-atstart=no``, toggles counting
  around the loop and reports ``(I(2N) - I(N)) / N``, split into glibc ``malloc`` and the
  rest; see ``benchmarks/README.md``). Target: helios <= 1.01x plain.
* GPU (skipped without CUDA), time per step, interleaved repeats: ``fp16-mixed`` and
  ``bf16-mixed`` with the helpers against the hand-written loop (target <= 1.02x), and what
  ``enable_compile=True`` gains over eager helios at ``bf16-mixed`` on the tutorial network
  and on a larger convolutional network (``WideNet``). Each time is a run of warm-up + S
  steps minus a run of the warm-up alone, so compilation and cuDNN tuning drop out.

Usage (from the repository root)::

    python benchmarks/bench_precision.py                       # callgrind N=100, and GPU
    python benchmarks/bench_precision.py --callgrind-steps 20  # quicker, noisier
    python benchmarks/bench_precision.py --skip-callgrind      # GPU part only
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import statistics
import sys
import time
import typing
from collections.abc import Callable

import torch
import torch.utils.data as tud
from torch import nn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import bench_fit as bf

TARGETS = {"callgrind": 1.01, "gpu": 1.02}
DTYPES = {"bf16-mixed": torch.bfloat16, "fp16-mixed": torch.float16}


class WideNet(nn.Module):
    """A larger network for the compile measurement: a VGG-like stack on 3x32x32 images."""

    def __init__(self) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]

        self.features = nn.Sequential(
            *block(3, 64),
            *block(64, 64),
            nn.MaxPool2d(2),
            *block(64, 128),
            *block(128, 128),
            nn.MaxPool2d(2),
            *block(128, 256),
            *block(256, 256),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(256 * 4 * 4, 512), nn.ReLU())
        self.out = nn.Linear(512, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.head(self.features(x)))


NETS: dict[str, Callable[[], nn.Module]] = {"tutorial": bf.Net, "wide": WideNet}


# -- the two sides ----------------------------------------------------------------------


def _loader(dataset: tud.Dataset, batch_size: int) -> typing.Any:
    import helios.data as hld

    loader, sampler = hld.create_dataloader(
        dataset, random_seed=bf.SEED, batch_size=batch_size, shuffle=True, drop_last=True
    )
    sampler.set_epoch(0)
    return loader


def run_plain(
    dataset: tud.Dataset,
    batch_size: int,
    precision: str,
    device: torch.device,
    on_ready: Callable[[], None] = bf._noop,
    on_done: Callable[[], None] = bf._noop,
    net_name: str = "tutorial",
) -> None:
    """The hand-written loop: autocast, and a GradScaler at fp16."""
    from helios.core import rng

    rng.seed_rngs(bf.SEED)
    net = NETS[net_name]().to(device)
    criterion = nn.CrossEntropyLoss().to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=bf.LR, momentum=bf.MOMENTUM)
    dtype = DTYPES[precision]
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16-mixed" else None
    loader = _loader(dataset, batch_size)
    net.train()
    on_ready()
    for inputs, labels in loader:
        inputs = inputs.to(device)
        labels = labels.to(device)
        optimizer.zero_grad()
        with torch.autocast(device.type, dtype=dtype):
            outputs = net(inputs)
            loss = criterion(outputs, labels)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
    on_done()


def run_helios(
    dataset: tud.Dataset,
    batch_size: int,
    precision: str,
    device: torch.device,
    on_ready: Callable[[], None] = bf._noop,
    on_done: Callable[[], None] = bf._noop,
    net_name: str = "tutorial",
    compile_networks: bool = False,
) -> None:
    """``Trainer.fit`` for one epoch with a step written with the helpers."""
    import helios.data as hld
    import helios.model as hlm
    import helios.trainer as hlt

    class BenchDataModule(hld.DataModule):
        def setup(self) -> None:
            params = hld.DataLoaderParams(
                random_seed=bf.SEED, batch_size=batch_size, shuffle=True, drop_last=True
            )
            self._train_dataset = self._create_dataset(dataset, params)

    class BenchModel(hlm.Model):
        def setup(self, fast_init: bool = False) -> None:
            self._net = NETS[net_name]().to(self.device)
            self._criterion = nn.CrossEntropyLoss().to(self.device)
            self._optimizer = torch.optim.SGD(
                self._net.parameters(), lr=bf.LR, momentum=bf.MOMENTUM
            )

        def train(self) -> None:
            self._net.train()

        def on_training_start(self) -> None:
            on_ready()

        def train_step(self, batch: typing.Any, state: hlt.TrainingState) -> None:
            inputs, labels = batch
            inputs = inputs.to(self.device)
            labels = labels.to(self.device)
            self._optimizer.zero_grad()
            with self.autocast():
                outputs = self._net(inputs)
                loss = self._criterion(outputs, labels)
            self.backward(loss)
            self.optimizer_step(self._optimizer)

        def on_training_end(self) -> None:
            on_done()

    trainer = hlt.Trainer(
        run_name="bench",
        total_steps=1,
        use_cpu=device.type == "cpu",
        random_seed=bf.SEED,
        print_banner=False,
        precision=precision,
        enable_compile=compile_networks,
    )
    if not trainer.fit(BenchModel("bench"), BenchDataModule()):
        raise RuntimeError("helios fit failed; see the log above")


# -- workers (child processes) ----------------------------------------------------------


def callgrind_worker(args: argparse.Namespace) -> None:
    """Run one side (bf16-mixed, CPU) for ``args.steps`` steps, pausing around the loop."""
    bf._one_thread()
    cpu = torch.device("cpu")
    dataset = bf.make_dataset(args.steps * args.batch_size)

    def handshake(word: str) -> Callable[[], None]:
        def signal() -> None:
            sys.__stdout__.write(f"{word} {os.getpid()}\n")  # type: ignore[union-attr]
            sys.__stdout__.flush()  # type: ignore[union-attr]
            sys.stdin.readline()

        return signal

    if args.warmup:
        warm = bf.make_dataset(args.warmup * args.batch_size)
        run_helios(warm, args.batch_size, "bf16-mixed", cpu)
        run_plain(warm, args.batch_size, "bf16-mixed", cpu)
    ready, done = handshake("@@READY"), handshake("@@DONE")
    run = run_helios if args.side == "helios" else run_plain
    run(dataset, args.batch_size, "bf16-mixed", cpu, ready, done)


# -- GPU --------------------------------------------------------------------------------


def _timed(
    side: str,
    precision: str,
    net_name: str,
    batch_size: int,
    steps: int,
    compile_networks: bool = False,
) -> float:
    """Seconds from right before the first batch to right after the last, synchronised."""
    device = torch.device("cuda")
    dataset = bf.make_dataset(steps * batch_size)
    marks: list[float] = []

    def mark() -> None:
        torch.cuda.synchronize()
        marks.append(time.perf_counter())

    if side == "helios":
        run_helios(dataset, batch_size, precision, device, mark, mark, net_name, compile_networks)
    else:
        run_plain(dataset, batch_size, precision, device, mark, mark, net_name)
    return marks[1] - marks[0]


def measure_gpu(args: argparse.Namespace) -> str:
    """Time per step on the GPU: helpers against the hand-written loop, and compile."""
    rows = [
        "| network | precision | compile | helios (ms/step) | plain (ms/step) | ratio, median "
        "of pairs | target |",
        "|---|---|:---:|---:|---:|---:|---:|",
    ]

    def per_step(side: str, precision: str, net: str, compile_networks: bool = False) -> float:
        # A long run minus a short one: the difference holds only steady-state steps (no
        # compilation, no cuDNN tuning, no first-call allocations).
        short, long = args.gpu_warmup, args.gpu_warmup + args.gpu_steps
        batch = args.gpu_batch_size
        t_long = _timed(side, precision, net, batch, long, compile_networks)
        t_short = _timed(side, precision, net, batch, short, compile_networks)
        return (t_long - t_short) / args.gpu_steps

    for precision in ("fp16-mixed", "bf16-mixed"):
        helios_times, plain_times = [], []
        for rep in range(args.gpu_repeats + 1):
            order = ("helios", "plain") if rep % 2 == 0 else ("plain", "helios")
            found = {side: per_step(side, precision, "tutorial") for side in order}
            if rep == 0:
                continue  # warm-up pair
            helios_times.append(found["helios"])
            plain_times.append(found["plain"])
        ratio = statistics.median(h / p for h, p in zip(helios_times, plain_times, strict=True))
        rows.append(
            f"| tutorial | {precision} | off | {1e3 * min(helios_times):.3f} | "
            f"{1e3 * min(plain_times):.3f} | {ratio:.4f} | <= {TARGETS['gpu']} |"
        )
    compile_rows = [
        "| network | eager helios (ms/step) | compiled helios (ms/step) | gain |",
        "|---|---:|---:|---:|",
    ]
    for net in NETS:
        eager = min(per_step("helios", "bf16-mixed", net) for _ in range(args.gpu_repeats))
        compiled = min(per_step("helios", "bf16-mixed", net, True) for _ in range(args.gpu_repeats))
        compile_rows.append(
            f"| {net} | {1e3 * eager:.3f} | {1e3 * compiled:.3f} | {eager / compiled:.2f}x |"
        )
    return "\n".join(rows) + "\n\nCompile, bf16-mixed:\n\n" + "\n".join(compile_rows)


# -- the parent -------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--callgrind-steps", type=int, default=100, help="N (2N is run too)")
    parser.add_argument("--callgrind-batch-size", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=10, help="warm-up steps of both sides")
    parser.add_argument("--keep-callgrind", help="copy the callgrind files into this folder")
    parser.add_argument("--gpu-batch-size", type=int, default=128)
    parser.add_argument("--gpu-steps", type=int, default=200)
    parser.add_argument("--gpu-warmup", type=int, default=20)
    parser.add_argument("--gpu-repeats", type=int, default=5)
    parser.add_argument("--skip-callgrind", action="store_true")
    parser.add_argument("--skip-gpu", action="store_true")
    # Internal: the callgrind worker (bench_fit's _count_instructions passes these).
    parser.add_argument("--worker", choices=("callgrind",), help=argparse.SUPPRESS)
    parser.add_argument("--side", choices=("helios", "plain"), help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--unit", default="epoch", help=argparse.SUPPRESS)
    parser.add_argument("--plain-body", default="inline", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.worker_script = __file__
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker == "callgrind":
        callgrind_worker(args)
        return 0
    print(
        f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    sections = []
    if not args.skip_callgrind:
        if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
            sections.append("callgrind: valgrind is not installed; skipped")
        else:
            if args.keep_callgrind:
                pathlib.Path(args.keep_callgrind).mkdir(parents=True, exist_ok=True)
            counts = bf.measure_callgrind(args)
            table = bf.callgrind_table(counts, args.callgrind_steps, args.callgrind_batch_size)
            table = table.rsplit("\n\nTarget:", 1)[0]
            sections.append(
                "Instructions, bf16-mixed on the CPU (callgrind), helios = Trainer + helpers, "
                f"plain = hand-written autocast loop:\n\n{table}\n\n"
                f"Target: per iteration <= {TARGETS['callgrind']}x plain."
            )
        print(sections[-1], flush=True)
    if not args.skip_gpu:
        if not torch.cuda.is_available():
            sections.append("GPU: CUDA is not available; skipped")
        else:
            sections.append("GPU, time per step:\n\n" + measure_gpu(args))
        print(sections[-1], flush=True)
    print("\n\n## Summary\n\n" + "\n\n".join(sections))
    return 0


if __name__ == "__main__":
    sys.exit(main())
