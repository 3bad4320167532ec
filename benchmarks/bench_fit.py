"""Time helios ``Trainer.fit`` against a plain PyTorch loop on the tutorial network.

Both sides train seed 000's ``Net`` with the same synthetic CIFAR-shaped data (3x32x32
random images, 10 classes), the same loader (helios ``create_dataloader``, shuffled,
``drop_last``), the same SGD optimizer and the same number of steps, on the CPU with one
torch thread. The helios side is an ordinary ``Model`` whose ``train_step`` is the plain
loop's body (no loss bookkeeping) and a ``DataModule`` with the same dataset and settings.

Two measurements, each comparing the sides within one run:

* Wall time, interleaved (helios then plain, then plain then helios, ...) in a child process
  whose stderr is a pseudo-terminal, so the progress bars draw as they do for a user. Batch
  sizes 4 and 64, progress bar off, and on (helios' bars against the plain loop wrapped in
  ``tqdm``). "fit" is the whole ``fit`` call against the whole plain function (model,
  optimizer and loader creation included); "loop" is from right before the first batch to
  right after the last (``Model.on_training_start`` to ``Model.on_training_end`` for
  helios). Wall time on a shared machine wanders by several percent, so the ratio of each
  helios run to its neighbouring plain run is taken and the median reported.
* Instructions per iteration with callgrind (``valgrind --tool=callgrind
  --instr-atstart=no``), batch 4, progress bar off. The worker stops right before its loop
  (inside ``Model.on_training_start`` for helios) and waits; the benchmark switches counting
  on with ``callgrind_control -i on <pid>``, lets it run, and switches counting off after the
  loop. Runs of N and 2N steps are counted and ``(I(2N) - I(N)) / N`` cancels every cost
  that does not grow with the number of steps. Each worker first runs a short warm-up of
  both sides, so the two processes reach the counted loop with similar heaps, and the
  instructions inside glibc's ``malloc.c`` are reported apart: their count per call depends
  on the heap's history and wanders by about 0.3% per iteration between identical runs.

See ``benchmarks/README.md`` for the measured numbers and where helios' extra instructions
go.

Usage (from the repository root; the callgrind part takes several minutes)::

    python benchmarks/bench_fit.py
    python benchmarks/bench_fit.py --skip-callgrind --repeats 15
    python benchmarks/bench_fit.py --skip-wall --callgrind-steps 200

Two environment variables change the helios side only, to compare helios with itself
(e.g. the non-finite guard on and off): ``BENCH_FIT_TRAINER_ARGS`` is a JSON object of
extra ``Trainer`` arguments, and ``BENCH_FIT_RECORD_LOSS=1`` makes ``train_step`` put its
loss into ``self._loss_items`` as models usually do.

Targets at batch 4: instructions per iteration <= 1.005x the plain loop's with the bar off;
wall time <= 1.01x with the bar off and <= 1.03x with it on.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import gc
import json
import os
import pathlib
import pty
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
import typing
from collections.abc import Callable

import torch
import torch.nn.functional as F  # noqa: N812 - the tutorial's spelling
import torch.utils.data as tud
from torch import nn

SEED = 6691
LR = 0.001
MOMENTUM = 0.9
TARGETS = {"callgrind": 1.005, "wall_off": 1.01, "wall_on": 1.03}


def _noop() -> None:
    pass


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
        return self.fc3(x)


def make_dataset(num_samples: int) -> tud.TensorDataset:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn((num_samples, 3, 32, 32), generator=generator)
    labels = torch.randint(0, 10, (num_samples,), generator=generator)
    return tud.TensorDataset(images, labels)


# -- the two sides ----------------------------------------------------------------------


def run_plain(
    dataset: tud.Dataset,
    batch_size: int,
    progress: bool,
    on_ready: Callable[[], None] = _noop,
    on_done: Callable[[], None] = _noop,
    body: str = "inline",
) -> None:
    """The plain PyTorch loop: one epoch over ``dataset``.

    ``body="function"`` runs the loop body as a function call per batch, as ``train_step``
    is: the step's tensors (and so the autograd graph) then die when the call returns
    instead of living on until the next batch rebinds the loop's variables.
    """
    import helios.data as hld
    from helios.core import rng

    rng.seed_rngs(SEED)
    device = torch.device("cpu")
    net = Net().to(device)
    criterion = nn.CrossEntropyLoss().to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM)
    loader, sampler = hld.create_dataloader(
        dataset, random_seed=SEED, batch_size=batch_size, shuffle=True, drop_last=True
    )
    sampler.set_epoch(0)
    net.train()
    batches: typing.Iterable[typing.Any] = loader
    if progress:
        from tqdm import tqdm

        batches = tqdm(loader, desc="Epoch 1", unit="iter")
    if body == "function":

        def step(inputs: torch.Tensor, labels: torch.Tensor) -> None:
            inputs = inputs.to(device)
            labels = labels.to(device)
            optimizer.zero_grad()
            outputs = net(inputs)
            loss = criterion(outputs, labels)
            loss.backward()
            optimizer.step()

        on_ready()
        for inputs, labels in batches:
            step(inputs, labels)
        on_done()
        return

    on_ready()
    for inputs, labels in batches:
        inputs = inputs.to(device)
        labels = labels.to(device)
        optimizer.zero_grad()
        outputs = net(inputs)
        loss = criterion(outputs, labels)
        loss.backward()
        optimizer.step()
    on_done()


def run_helios(
    dataset: tud.Dataset,
    batch_size: int,
    progress: bool,
    on_ready: Callable[[], None] = _noop,
    on_done: Callable[[], None] = _noop,
    unit: str = "epoch",
) -> None:
    """``Trainer.fit`` for one epoch over ``dataset`` (or as many iterations)."""
    import helios.data as hld
    import helios.model as hlm
    import helios.trainer as hlt

    class BenchDataModule(hld.DataModule):
        def setup(self) -> None:
            params = hld.DataLoaderParams(
                random_seed=SEED, batch_size=batch_size, shuffle=True, drop_last=True
            )
            self._train_dataset = self._create_dataset(dataset, params)

    record_loss = os.environ.get("BENCH_FIT_RECORD_LOSS") == "1"

    class BenchModel(hlm.Model):
        def setup(self, fast_init: bool = False) -> None:
            self._net = Net().to(self.device)
            self._criterion = nn.CrossEntropyLoss().to(self.device)
            self._optimizer = torch.optim.SGD(self._net.parameters(), lr=LR, momentum=MOMENTUM)

        def train(self) -> None:
            self._net.train()

        def on_training_start(self) -> None:
            on_ready()

        def train_step(self, batch: typing.Any, state: hlt.TrainingState) -> None:
            inputs, labels = batch
            inputs = inputs.to(self.device)
            labels = labels.to(self.device)
            self._optimizer.zero_grad()
            outputs = self._net(inputs)
            loss = self._criterion(outputs, labels)
            loss.backward()
            self._optimizer.step()
            if record_loss:
                self._loss_items["loss"] = loss.detach()

        def on_training_end(self) -> None:
            on_done()

    steps = len(dataset) // batch_size  # type: ignore[arg-type]
    extra_args = json.loads(os.environ.get("BENCH_FIT_TRAINER_ARGS", "{}"))
    trainer = hlt.Trainer(
        run_name="bench",
        train_unit=unit,
        total_steps=1 if unit == "epoch" else steps,
        use_cpu=True,
        random_seed=SEED,
        enable_progress_bar=progress,
        print_banner=False,
        **extra_args,
    )
    if not trainer.fit(BenchModel("bench"), BenchDataModule()):
        raise RuntimeError("helios fit failed; see the log above")


# -- workers (child processes) ----------------------------------------------------------


def _one_thread() -> None:
    torch.set_num_threads(1)
    # The trainer's first use_deterministic_algorithms call imports torch._inductor (seconds);
    # do it before anything is timed.
    torch.use_deterministic_algorithms(False)


def wall_worker(args: argparse.Namespace) -> None:
    """Interleave timed runs of both sides and write the raw times to ``args.out``."""
    _one_thread()
    dataset = make_dataset(args.samples)
    configs = [(b, bar) for bar in (False, True) for b in args.batch_sizes]
    results: dict[str, dict[str, list[float]]] = {}

    def timed(side: str, batch_size: int, bar: bool) -> tuple[float, float]:
        marks: list[float] = []

        def mark() -> None:
            marks.append(time.perf_counter())

        gc.collect()
        start = time.perf_counter()
        if side == "helios":
            run_helios(dataset, batch_size, bar, mark, mark, unit=args.unit)
        else:
            run_plain(dataset, batch_size, bar, mark, mark, body=args.plain_body)
        end = time.perf_counter()
        return end - start, marks[1] - marks[0]

    for batch_size, bar in configs:  # warm-up, untimed
        timed("helios", batch_size, bar)
        timed("plain", batch_size, bar)
    for rep in range(args.repeats):
        for batch_size, bar in configs:
            key = f"{batch_size}/{'on' if bar else 'off'}"
            entry = results.setdefault(key, {})
            order = ("helios", "plain") if rep % 2 == 0 else ("plain", "helios")
            for side in order:
                fit_time, loop_time = timed(side, batch_size, bar)
                entry.setdefault(f"{side}_fit", []).append(fit_time)
                entry.setdefault(f"{side}_loop", []).append(loop_time)
    pathlib.Path(args.out).write_text(json.dumps(results))


def handshake(word: str) -> Callable[[], None]:
    """Return a function that tells the parent ``word`` and this pid, then waits for it."""

    def signal() -> None:
        sys.__stdout__.write(f"{word} {os.getpid()}\n")  # type: ignore[union-attr]
        sys.__stdout__.flush()  # type: ignore[union-attr]
        sys.stdin.readline()

    return signal


def callgrind_worker(args: argparse.Namespace) -> None:
    """Run one side for ``args.steps`` steps, pausing around the loop for the toggles."""
    _one_thread()
    dataset = make_dataset(args.steps * args.batch_size)

    if args.warmup:
        # The same history for both sides: glibc malloc's cost per call depends on the state
        # of the heap, which otherwise differs between the two processes.
        warm = make_dataset(args.warmup * args.batch_size)
        run_helios(warm, args.batch_size, False, unit=args.unit)
        run_plain(warm, args.batch_size, False, body=args.plain_body)
    ready, done = handshake("@@READY"), handshake("@@DONE")
    if args.side == "helios":
        run_helios(dataset, args.batch_size, False, ready, done, unit=args.unit)
    else:
        run_plain(dataset, args.batch_size, False, ready, done, body=args.plain_body)


# -- the parent -------------------------------------------------------------------------


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
    return env


def measure_wall(args: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    """Run the wall-time worker with its stderr on a drained pseudo-terminal."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    drained = [0]

    def drain() -> None:
        with contextlib.suppress(OSError):
            while chunk := os.read(master, 65536):
                drained[0] += len(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "wall.json"
        command = [
            sys.executable,
            __file__,
            "--worker",
            "wall",
            "--out",
            str(out),
            "--samples",
            str(args.samples),
            "--repeats",
            str(args.repeats),
            "--unit",
            args.unit,
            "--plain-body",
            args.plain_body,
            "--batch-sizes",
            *map(str, args.batch_sizes),
        ]
        # stdout takes the trainer's log lines; stderr the progress bars.
        subprocess.run(
            command,
            stdout=subprocess.DEVNULL,
            stderr=slave,
            check=True,
            env=_child_env(),
            cwd=tmp,
        )
        os.close(slave)
        reader.join(timeout=5)
        os.close(master)
        return typing.cast(dict[str, dict[str, list[float]]], json.loads(out.read_text()))


def _count_instructions(
    args: argparse.Namespace, side: str, steps: int, tmp: str, script: str = __file__
) -> tuple[int, int]:
    """Count one side's instructions: ``(total, inside glibc malloc)``.

    ``script`` is the benchmark whose ``--worker callgrind`` runs the side.
    """
    out_file = pathlib.Path(tmp) / f"callgrind.{side}.{steps}.out"
    command = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={out_file}",
        sys.executable,
        # Another benchmark may count its own worker with this machinery (bench_precision).
        getattr(args, "worker_script", script),
        "--worker",
        "callgrind",
        "--side",
        side,
        "--steps",
        str(steps),
        "--batch-size",
        str(args.callgrind_batch_size),
        "--unit",
        args.unit,
        "--plain-body",
        args.plain_body,
        "--warmup",
        str(args.warmup),
    ]
    log_file = pathlib.Path(tmp) / f"valgrind.{side}.{steps}.log"
    with log_file.open("w") as log:
        child = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=_child_env(),
            cwd=tmp,
        )
    assert child.stdin is not None and child.stdout is not None

    def wait_for(word: str) -> str:
        for line in child.stdout:  # type: ignore[union-attr]
            if line.startswith(word):
                return line.split()[1]
        raise RuntimeError(
            f"callgrind worker ({side}, {steps} steps) exited before {word}:\n"
            + log_file.read_text()[-3000:]
        )

    for word, switch in (("@@READY", "on"), ("@@DONE", "off")):
        pid = wait_for(word)
        subprocess.run(["callgrind_control", "-i", switch, pid], check=True, capture_output=True)
        child.stdin.write("\n")
        child.stdin.flush()
    child.stdout.read()
    if child.wait() != 0:
        raise RuntimeError(
            f"callgrind worker ({side}, {steps} steps) failed:\n" + log_file.read_text()[-3000:]
        )
    if args.keep_callgrind:
        shutil.copy(out_file, pathlib.Path(args.keep_callgrind) / out_file.name)
    match = re.search(r"^totals:\s+(\d+)", out_file.read_text(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no totals line in {out_file}")
    return int(match.group(1)), _malloc_instructions(out_file)


def _malloc_instructions(out_file: pathlib.Path) -> int:
    """Return the instructions spent inside glibc's ``malloc.c`` (self cost)."""
    listing = subprocess.run(
        ["callgrind_annotate", "--threshold=100", "--auto=no", "--inclusive=no", str(out_file)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    total = 0
    for line in listing.splitlines():
        match = re.match(r"\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(.*)$", line)
        if match is not None and "malloc/malloc.c:" in match.group(2):
            total += int(match.group(1).replace(",", ""))
    return total


def measure_callgrind(
    args: argparse.Namespace, sides: tuple[str, str] = ("helios", "plain"), script: str = __file__
) -> dict[str, dict[int, tuple[int, int]]]:
    """Count the instructions of both sides at N and 2N steps (``script`` runs them)."""
    counts: dict[str, dict[int, tuple[int, int]]] = {side: {} for side in sides}
    steps = (args.callgrind_steps, 2 * args.callgrind_steps)
    with tempfile.TemporaryDirectory() as tmp:
        for n in steps:
            for side in sides:
                started = time.perf_counter()
                counts[side][n] = _count_instructions(args, side, n, tmp, script)
                print(
                    f"[callgrind] {side:6s} {n:5d} steps: {counts[side][n][0]:,} instructions "
                    f"({time.perf_counter() - started:.0f}s)",
                    flush=True,
                )
    return counts


def wall_table(results: dict[str, dict[str, list[float]]], batch_sizes: list[int]) -> str:
    """Format the wall times: the fastest run of each side, and per-pair ratios."""
    rows = [
        "| batch | bar | helios fit, min (s) | plain, min (s) | fit ratio, min "
        "| fit ratio, median of pairs | loop ratio, min | loop ratio, median of pairs "
        "| target |",
        "|---:|:---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for bar in ("off", "on"):
        for batch_size in batch_sizes:
            entry = results[f"{batch_size}/{bar}"]
            cells = [f"{min(entry['helios_fit']):.3f}", f"{min(entry['plain_fit']):.3f}"]
            for what in ("fit", "loop"):
                helios, plain = entry[f"helios_{what}"], entry[f"plain_{what}"]
                pairs = statistics.median(h / p for h, p in zip(helios, plain))
                cells += [f"{min(helios) / min(plain):.4f}", f"{pairs:.4f}"]
            target = ""
            if batch_size == 4:
                target = f"<= {TARGETS['wall_on' if bar == 'on' else 'wall_off']}"
            rows.append(f"| {batch_size} | {bar} | {' | '.join(cells)} | {target} |")
    return "\n".join(rows)


def callgrind_table(
    counts: dict[str, dict[int, tuple[int, int]]],
    n: int,
    batch_size: int,
    sides: tuple[str, str] = ("helios", "plain"),
    target: float = TARGETS["callgrind"],
) -> str:
    """Format the counts: per iteration in total and outside glibc malloc.

    ``sides`` names the measured side first, the baseline second.
    """
    name, base = sides
    total = {side: (c[2 * n][0] - c[n][0]) / n for side, c in counts.items()}
    in_malloc = {side: (c[2 * n][1] - c[n][1]) / n for side, c in counts.items()}
    rest = {side: total[side] - in_malloc[side] for side in counts}
    rows = [
        f"| side | I({n}) | I({2 * n}) | per iteration (batch {batch_size}) "
        "| in glibc malloc / iteration | outside malloc / iteration |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for side in sides:
        c = counts[side]
        rows.append(
            f"| {side} | {c[n][0]:,} | {c[2 * n][0]:,} | {total[side]:,.0f} "
            f"| {in_malloc[side]:,.0f} | {rest[side]:,.0f} |"
        )
    cells = []
    for table in (total, in_malloc, rest):
        cells.append(f"{table[name] / table[base]:.5f} ({table[name] - table[base]:+,.0f})")
    rows.append(f"| **{name} / {base}** | | | **{cells[0]}** | {cells[1]} | **{cells[2]}** |")
    return "\n".join(rows) + f"\n\nTarget: per iteration <= {target}x {base}."


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[4, 64])
    parser.add_argument(
        "--samples", type=int, default=4096, help="dataset size for wall time (one epoch)"
    )
    parser.add_argument("--repeats", type=int, default=9, help="timed runs per side and case")
    parser.add_argument("--unit", choices=("epoch", "iteration"), default="epoch")
    parser.add_argument(
        "--plain-body",
        choices=("inline", "function"),
        default="inline",
        help="the plain loop's body written inline (as users do) or as a per-batch function "
        "(scoped like train_step)",
    )
    parser.add_argument("--callgrind-steps", type=int, default=200, help="N (2N is run too)")
    parser.add_argument("--callgrind-batch-size", type=int, default=4)
    parser.add_argument(
        "--warmup",
        type=int,
        default=20,
        help="steps of both sides run before the counted run (0: none)",
    )
    parser.add_argument("--keep-callgrind", help="copy the callgrind files into this folder")
    parser.add_argument("--raw", help="write the raw wall times (JSON) to this file")
    parser.add_argument("--skip-wall", action="store_true")
    parser.add_argument("--skip-callgrind", action="store_true")
    # Internal: the child processes.
    parser.add_argument("--worker", choices=("wall", "callgrind"), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--side", choices=("helios", "plain"), help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker == "wall":
        wall_worker(args)
        return 0
    if args.worker == "callgrind":
        callgrind_worker(args)
        return 0

    print(
        f"torch {torch.__version__}, 1 thread, unit={args.unit}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    sections = []
    if not args.skip_wall:
        print(f"[wall] {args.repeats} interleaved repeats ...", flush=True)
        results = measure_wall(args)
        if args.raw:
            pathlib.Path(args.raw).write_text(json.dumps(results, indent=1))
        sections.append(
            f"Wall time, {args.samples} samples per run (batch 4: {args.samples // 4} steps, "
            f"batch 64: {args.samples // 64} steps), median of {args.repeats} interleaved "
            f"pairs:\n\n{wall_table(results, args.batch_sizes)}"
        )
        print(sections[-1], flush=True)
    if not args.skip_callgrind:
        if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
            sections.append("callgrind: valgrind is not installed; skipped")
        else:
            if args.keep_callgrind:
                pathlib.Path(args.keep_callgrind).mkdir(parents=True, exist_ok=True)
            counts = measure_callgrind(args)
            sections.append(
                "Instructions (callgrind, bar off):\n\n"
                + callgrind_table(counts, args.callgrind_steps, args.callgrind_batch_size)
            )
    print("\n\n## Summary\n\n" + "\n\n".join(sections))
    return 0


if __name__ == "__main__":
    sys.exit(main())
