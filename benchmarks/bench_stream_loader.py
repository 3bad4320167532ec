"""Throughput of a helios stream loader against a plain DataLoader; resume time by position.

**Throughput.** The stream is a folder of JSON-lines text shards (``--shards`` files of
``--windows`` lines, each a window of 257 characters), read line by line and encoded to a
tensor of character ids: what a character-level language model reads. The dataset splits
itself among the loader workers the way PyTorch's documentation shows (``get_worker_info``,
every worker its own shards) and, under helios, through ``select_part`` (the same shards),
so both loaders read every sample once. Both sides batch ``--batch-size`` windows with
``num_workers`` 0 and 2:

* plain: ``torch.utils.data.DataLoader(dataset, batch_size, num_workers)``;
* helios: ``helios.data.create_dataloader(dataset, batch_size=..., num_workers=...)``, a
  ``StreamLoader`` (every batch carries its worker's position to the main process) over a
  ``ResumableStream`` (per-batch seeding of the workers' random streams, position
  counting, the dataset's own state).

Each case runs ``--repeats`` times per side, interleaved (helios then plain, then plain then
helios, ...); reported per side: the median wall time of a full pass and the median CPU time
of all its processes (the main one and its workers, from ``getrusage``). The ratios are
plain / helios (1.0: as fast; the goal is >= 0.98). On a shared machine wall time wanders
by several percent from run to run; the CPU time, which other load does not inflate much,
is the steadier measure of what helios adds.

**Resume.** A stateful stream of ``--resume-samples`` samples (a counter, one int per
sample) is read to position 1,000 and to position 1,000,000 (the position is set through
the stream's state, not read there); then the loader's ``state_dict()`` is loaded into a
new loader and the time to its first batch is measured, with 0 and 2 workers (``--repeats``
times each, median). Restoring never replays: both positions cost about the same.

**Instructions** (``--callgrind``, several minutes): each side and number of workers runs one
pass under ``valgrind --tool=callgrind --instr-atstart=no`` (the workers are forked under the
same valgrind and counted too: every process's totals are added); counting is switched on
right before the loader is made and off after the pass, and the difference between a pass
over ``--callgrind-windows`` and twice as many windows per shard cancels what a pass costs
once (starting the workers). The ratio plain / helios of these differences is what helios
adds per sample, free of the noise of a shared machine.

Usage (from the repository root)::

    python benchmarks/bench_stream_loader.py
    python benchmarks/bench_stream_loader.py --repeats 9 --windows 4000
    python benchmarks/bench_stream_loader.py --callgrind --skip-throughput --skip-resume
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.utils.data as tud

import helios.data as hld
from helios.core import rng

CHARS = "\nabcdefghijklmnopqrstuvwxyz ,."
STOI = {c: i for i, c in enumerate(CHARS)}
WINDOW = 257


def write_shards(folder: pathlib.Path, shards: int, windows: int) -> list[pathlib.Path]:
    """Write the text shards; return their paths."""
    generator = torch.Generator().manual_seed(0)
    paths = []
    for shard in range(shards):
        ids = torch.randint(len(CHARS), (windows, WINDOW), generator=generator).tolist()
        lines = [json.dumps({"text": "".join(CHARS[i] for i in row)}) for row in ids]
        path = folder / f"part-{shard:03d}.jsonl"
        path.write_text("\n".join(lines) + "\n")
        paths.append(path)
    return paths


class TextShards(tud.IterableDataset):
    """The windows of a list of JSON-lines shards, as tensors of character ids."""

    def __init__(self, paths: list[pathlib.Path]) -> None:
        self.paths = paths
        self.part: tuple[int, int] | None = None

    def select_part(self, index: int, count: int) -> None:
        self.part = (index, count)

    def __iter__(self) -> Iterator[torch.Tensor]:
        if self.part is not None:
            index, count = self.part
        else:
            info = tud.get_worker_info()
            index, count = (info.id, info.num_workers) if info is not None else (0, 1)
        for path in self.paths[index::count]:
            with open(path) as lines:
                for line in lines:
                    text = json.loads(line)["text"]
                    yield torch.tensor([STOI[c] for c in text])


class Counter(tud.IterableDataset):
    """The ints 0 .. size-1; its state is its position (a stateful stream)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.part = (0, 1)
        self._start = self._next = 0

    def select_part(self, index: int, count: int) -> None:
        self.part = (index, count)

    def __iter__(self) -> Iterator[int]:
        index, count = self.part
        start, self._start = self._start, 0
        for position in range(start, self.size):
            self._next = position + 1
            if position % count == index:
                yield position

    def state_dict(self) -> dict[str, int]:
        return {"next": self._next}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._start = state["next"]


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # workers, once joined
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def one_pass(loader: Any) -> tuple[float, float, int]:
    """Iterate a loader once; return wall seconds, CPU seconds and the samples seen."""
    cpu, start = _cpu_seconds(), time.perf_counter()
    samples = 0
    for batch in loader:
        samples += len(batch)
    wall = time.perf_counter() - start
    del loader  # the workers are joined: their CPU time is counted
    return wall, _cpu_seconds() - cpu, samples


def throughput(paths: list[pathlib.Path], workers: int, args: argparse.Namespace) -> None:
    def plain() -> Any:
        return tud.DataLoader(TextShards(paths), batch_size=args.batch_size, num_workers=workers)

    def helios() -> Any:
        loader, _ = hld.create_dataloader(
            TextShards(paths), batch_size=args.batch_size, num_workers=workers
        )
        return loader

    makers: dict[str, Callable[[], Any]] = {"plain": plain, "helios": helios}
    results: dict[str, list[tuple[float, float, int]]] = {"plain": [], "helios": []}
    for name in makers:  # warm up (imports, page cache)
        one_pass(makers[name]())
    for repeat in range(args.repeats):
        order = ("helios", "plain") if repeat % 2 == 0 else ("plain", "helios")
        for name in order:
            results[name].append(one_pass(makers[name]()))
    samples = {name: {r[2] for r in runs} for name, runs in results.items()}
    assert samples["plain"] == samples["helios"], f"different samples read: {samples}"
    wall = {name: statistics.median(r[0] for r in runs) for name, runs in results.items()}
    cpu = {name: statistics.median(r[1] for r in runs) for name, runs in results.items()}
    count = next(iter(samples["plain"]))
    print(
        f"num_workers={workers}: {count} samples; wall plain {wall['plain']:.3f}s helios "
        f"{wall['helios']:.3f}s ratio {wall['plain'] / wall['helios']:.3f}; CPU plain "
        f"{cpu['plain']:.3f}s helios {cpu['helios']:.3f}s ratio "
        f"{cpu['plain'] / cpu['helios']:.3f}"
    )


def resume_time(position: int, workers: int, args: argparse.Namespace) -> float:
    """Seconds from loading a state saved at ``position`` to the first batch after it."""
    size = args.resume_samples
    loader, _ = hld.create_dataloader(Counter(size), batch_size=16, num_workers=workers)
    parts = max(workers, 1)
    per_reader = position // parts
    # The state a run that had read ``position`` samples saves: each reader's dataset
    # state and position (set through the state, not by reading).
    iterator = iter(loader)
    next(iterator)
    state = loader.state_dict()
    del iterator
    state["readers"] = {
        reader: {
            "reader": reader,
            "epoch": 0,
            "position": per_reader,
            "dataset": {"next": position},
        }
        for reader in range(parts)
    }
    times = []
    for _ in range(args.repeats):
        resumed, _ = hld.create_dataloader(Counter(size), batch_size=16, num_workers=workers)
        start = time.perf_counter()
        resumed.load_state_dict(state)
        first = next(iter(resumed))
        times.append(time.perf_counter() - start)
        assert int(first[0]) >= position, (int(first[0]), position)
        del resumed
    return statistics.median(times)


def _make_loader(side: str, paths: list[pathlib.Path], workers: int, batch_size: int) -> Any:
    if side == "plain":
        return tud.DataLoader(TextShards(paths), batch_size=batch_size, num_workers=workers)
    loader, _ = hld.create_dataloader(TextShards(paths), batch_size=batch_size, num_workers=workers)
    return loader


def callgrind_child(side: str, workers: int, windows: int, args: argparse.Namespace) -> None:
    """One pass of one side, with counting switched on around it by the parent."""
    paths = write_shards(pathlib.Path.cwd(), args.shards, windows)
    one_pass(_make_loader(side, paths, workers, args.batch_size))  # the same heap history

    def handshake(word: str) -> None:
        sys.__stdout__.write(f"{word} {os.getpid()}\n")  # type: ignore[union-attr]
        sys.__stdout__.flush()  # type: ignore[union-attr]
        sys.stdin.readline()

    handshake("@@READY")
    one_pass(_make_loader(side, paths, workers, args.batch_size))
    handshake("@@DONE")


def count_instructions(side: str, workers: int, windows: int, args: argparse.Namespace) -> int:
    """Instructions of one pass (every process), counted by callgrind."""
    with tempfile.TemporaryDirectory() as folder:
        command = [
            "valgrind", "--tool=callgrind", "--instr-atstart=no",
            f"--callgrind-out-file={folder}/callgrind.%p", sys.executable, __file__,
            "--callgrind-child", side, str(workers), str(windows),
            "--shards", str(args.shards), "--batch-size", str(args.batch_size),
        ]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
        child = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True, cwd=folder, env=env,
        )  # fmt: skip
        assert child.stdin is not None and child.stdout is not None
        for word, switch in (("@@READY", "on"), ("@@DONE", "off")):
            line = child.stdout.readline()
            assert line.startswith(word), f"the callgrind child said {line!r}"
            pid = line.split()[1]
            subprocess.run(
                ["callgrind_control", "-i", switch, pid], check=True, capture_output=True
            )
            child.stdin.write("\n")
            child.stdin.flush()
        assert child.wait() == 0, f"the callgrind child ({side}, {workers}) failed"
        total = 0
        for path in pathlib.Path(folder).glob("callgrind.*"):
            # "totals:" (at the end) counts the events; "summary:" near the top may be 0.
            text = path.read_text()
            match = re.search(r"^totals:\s+(\d+)", text, re.MULTILINE) or re.search(
                r"^summary:\s+(\d+)", text, re.MULTILINE
            )
            total += int(match.group(1)) if match else 0
        return total


def callgrind(args: argparse.Namespace) -> None:
    n = args.callgrind_windows
    for workers in (0, 2):
        extra = {}
        for side in ("plain", "helios"):
            small, large = (count_instructions(side, workers, w, args) for w in (n, 2 * n))
            extra[side] = large - small
        samples = n * args.shards
        print(
            f"instructions, num_workers={workers}: per sample plain "
            f"{extra['plain'] / samples:,.0f}, helios {extra['helios'] / samples:,.0f}; "
            f"ratio {extra['plain'] / extra['helios']:.4f}"
        )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--windows", type=int, default=2500)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--resume-samples", type=int, default=2_000_000)
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-resume", action="store_true")
    parser.add_argument("--callgrind", action="store_true")
    parser.add_argument("--callgrind-windows", type=int, default=150)
    parser.add_argument("--callgrind-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    rng.seed_rngs(0)
    torch.set_num_threads(1)
    if args.callgrind_child:
        side, workers, windows = args.callgrind_child
        callgrind_child(side, int(workers), int(windows), args)
        return 0
    if not args.skip_throughput:
        with tempfile.TemporaryDirectory() as folder:
            paths = write_shards(pathlib.Path(folder), args.shards, args.windows)
            for workers in (0, 2):
                throughput(paths, workers, args)
    for workers in () if args.skip_resume else (0, 2):
        near, far = (resume_time(p, workers, args) for p in (1_000, 1_000_000))
        print(
            f"resume, num_workers={workers}: at sample 1,000 {near * 1000:.1f} ms, at "
            f"sample 1,000,000 {far * 1000:.1f} ms (ratio {far / near:.2f})"
        )
    if args.callgrind:
        callgrind(args)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
