"""Memory and step time of a model sharded by helios (FSDP2) against replicated and plain FSDP2.

The network is a stack of ``--blocks`` residual MLP blocks (LayerNorm, Linear d->4d, GELU,
Linear 4d->d, plus the input) of width ``--width`` in an ``nn.ModuleList``: with the defaults
(1024 x 6) about 50.4M float32 parameters. It trains with AdamW on synthetic data made in the
process (random inputs; the loss is the mean squared error against the input itself), with
a small batch per rank (``--batch``), so the memory is that of the parameters, gradients and
optimizer state, not of activations. Every setup runs in fresh ``torchrun`` processes
(``--nproc`` of them, default 2), one torch thread per rank, on gloo (``--device cpu``) or
NCCL with one GPU per rank (``--device cuda``):

* ``replicated``: helios ``Trainer.fit``; the model wraps its network in
  ``DistributedDataParallel`` in ``setup`` (as ``tests/helios/distributed/dist_job.py``).
* ``replicated-view``: the same with ``gradient_as_bucket_view=True``: DDP's default keeps
  its communication buckets next to the gradients (one more copy of the gradients); with
  the view the gradients live in the buckets. This row is the replicated model, gradients
  and Adam state alone, so it is the one the memory goal is measured against.
* ``sharded``: helios ``Trainer.fit``; ``self.net = self.shard_network(net, layers=Block)``.
* ``fsdp2``: the hand-written FSDP2 loop: ``init_process_group``, ``fully_shard`` on each
  block and on the root, AdamW, a ``DataLoader`` with a ``DistributedSampler`` (same batch
  size per rank, same step count), and ``zero_grad`` / forward / loss / ``backward`` /
  ``step``.

All four run the same step body (no loss bookkeeping), with the same seed for the weights.
Checkpoints are off.

Step time: each rank takes a timestamp at the start of every step (and one after the
last), so a step's time includes the loop's own work between steps (fetching the batch, the
trainer's per-batch hooks). The first ``--warmup`` steps are left out; per step the slowest
rank counts, and a run's step time is the median of its steady steps. Setups are
interleaved (replicated, replicated-view, sharded, fsdp2, replicated, ...) ``--repeats``
times so that drift on a shared machine hits all alike; the table shows the median and the
minimum over the runs, and the CPU time of the process per step (``time.process_time``,
slowest rank, median), which other processes on the machine disturb less than wall time.
Goal: sharded <= 1.03x fsdp2, as the median of the ratios of each sharded run to the fsdp2
run that follows it (the load of a shared machine drifts between repeats by more than the
difference sought; within a pair it mostly cancels).

Memory (per rank, measured): on the CPU, the bytes in use on the C heap, glibc's
``mallinfo2()`` (``uordblks + hblkhd``: every arena's allocated chunks plus the mmapped
ones; torch's CPU allocator does not cache, so freed tensors leave it), minus a baseline
taken right before the network is built (process group, data and trainer already set up,
and ``torch.distributed.fsdp`` imported in every setup: its first import puts about 17 MB of
module objects on the C heap, which would otherwise count against the sharded model). It
is sampled after ``backward`` and after the optimizer step of every step, the points
where parameters, gradients and Adam state all live (``zero_grad`` sets gradients to None
at the start of the next step); the table shows the peak over the run, of the rank with
the higher peak. It does not see transient peaks between the samples (a layer's gathered
parameters inside forward and backward); ``ru_maxrss`` (minus the RSS at the baseline) is
the process's high-water mark and does. On a GPU the same points read
``torch.cuda.memory_allocated()``, and the high-water column is
``torch.cuda.max_memory_allocated()``, both minus the baseline. As a cross-check the table
also shows the bytes of the tensors each rank holds after an optimizer step: its parameters
and gradients (the local shards, ``DTensor.to_local()``) and the optimizer state. Goal:
sharded <= 0.55x replicated per rank.

Building the network: the helios setups build the full network on every rank (on the
device) and then shard it: ``Model.shard_network`` picks the mesh's device type from the
network's parameters, and a network built on the meta device (the FSDP2 recipe: shard,
then ``to_empty`` and initialise) fails there (``AttributeError: 'NoneType' object has no
attribute 'current_device'`` from the meta device mesh). ``fully_shard`` frees the full
parameters, so the sampled heap peak (after backward, after step) does not contain them;
the high-water column does. The ``fsdp2`` loop follows the recipe (meta device, shard,
``to_empty``, ``reset_parameters``), so its high-water mark shows what the full build
costs the helios sharded row.

Usage (from the repository root)::

    python benchmarks/bench_sharding.py                       # ~50M parameters, 2 ranks, CPU
    python benchmarks/bench_sharding.py --repeats 5 --steps 30 --warmup 5
    python benchmarks/bench_sharding.py --width 512 --blocks 24
    python benchmarks/bench_sharding.py --device cuda         # NCCL, one GPU per rank

It prints a markdown table and the two ratios against their goals.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import pathlib
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

SETUPS = ("replicated", "replicated-view", "sharded", "fsdp2", "fsdp2-full")
DEFAULT_SETUPS = SETUPS[:4]
SEED = 0
LR = 1e-4


# -- memory -------------------------------------------------------------------------------


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class MemoryProbe:
    """Memory in use by this process, above a baseline: C heap on the CPU, torch on a GPU."""

    def __init__(self, device: Any) -> None:
        import torch

        self.torch = torch
        self.cuda = device.type == "cuda"
        self.device = device
        if not self.cuda:
            libc = ctypes.CDLL("libc.so.6")
            libc.mallinfo2.restype = _MallInfo2
            self._mallinfo2 = libc.mallinfo2
        self.baseline = 0
        self.baseline_rss = 0
        self.peak = 0
        self.samples = 0

    def in_use(self) -> int:
        """Bytes in use now (heap chunks in use, or torch's allocated GPU memory)."""
        if self.cuda:
            return int(self.torch.cuda.memory_allocated(self.device))
        info = self._mallinfo2()
        return int(info.uordblks + info.hblkhd)

    def start(self) -> None:
        """Take the baseline (call right before the network is built)."""
        if self.cuda:
            self.torch.cuda.synchronize(self.device)
            self.torch.cuda.reset_peak_memory_stats(self.device)
        self.baseline = self.in_use()
        self.baseline_rss = _rss_bytes()

    def sample(self) -> None:
        """Note the memory in use now; the peak over the samples is kept."""
        self.peak = max(self.peak, self.in_use() - self.baseline)
        self.samples += 1

    def high_water(self) -> int:
        """The process's high-water mark above the baseline (max RSS, or torch's peak)."""
        if self.cuda:
            return int(self.torch.cuda.max_memory_allocated(self.device)) - self.baseline
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - self.baseline_rss


def held_bytes(net: Any, optimizer: Any) -> int:
    """Bytes of this rank's parameters, gradients (local shards) and optimizer state."""
    import torch

    def local(tensor: torch.Tensor) -> torch.Tensor:
        to_local = getattr(tensor, "to_local", None)
        return to_local() if to_local is not None else tensor

    total = 0
    for param in net.parameters():
        total += local(param).nbytes
        if param.grad is not None:
            total += local(param.grad).nbytes
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                total += local(value).nbytes
    return total


# -- the network and the data -------------------------------------------------------------


def _make_network_classes() -> tuple[type, type]:
    from torch import nn

    class Block(nn.Module):
        """LayerNorm, Linear d->4d, GELU, Linear 4d->d, plus the input."""

        def __init__(self, width: int) -> None:
            super().__init__()
            self.norm = nn.LayerNorm(width)
            self.up = nn.Linear(width, 4 * width)
            self.down = nn.Linear(4 * width, width)

        def forward(self, x: Any) -> Any:
            return x + self.down(nn.functional.gelu(self.up(self.norm(x))))

    class Net(nn.Module):
        """``blocks`` residual MLP blocks in a ``ModuleList``."""

        def __init__(self, width: int, blocks: int) -> None:
            super().__init__()
            self.blocks = nn.ModuleList(Block(width) for _ in range(blocks))

        def forward(self, x: Any) -> Any:
            for block in self.blocks:
                x = block(x)
            return x

    return Block, Net


def _inputs(args: argparse.Namespace, world_size: int) -> Any:
    import torch

    generator = torch.Generator().manual_seed(SEED)
    return torch.randn(args.steps * args.batch * world_size, args.width, generator=generator)


# -- the workers (one torchrun rank each) -------------------------------------------------


class _Recorder:
    """Step timestamps and memory samples of one rank."""

    def __init__(self, probe: MemoryProbe) -> None:
        self.probe = probe
        self.marks: list[float] = []
        self.cpu_marks: list[float] = []
        self.held = 0

    def step_start(self) -> None:
        if self.probe.cuda:
            self.probe.torch.cuda.synchronize(self.probe.device)
        self.marks.append(time.perf_counter())
        self.cpu_marks.append(time.process_time())

    def result(self, setup: str, rank: int, parameters: int) -> dict[str, Any]:
        return {
            "setup": setup,
            "rank": rank,
            "parameters": parameters,
            "marks": self.marks,
            "cpu_marks": self.cpu_marks,
            "heap_peak": self.probe.peak,
            "samples": self.probe.samples,
            "high_water": self.probe.high_water(),
            "held": self.held,
        }


def _count_parameters(net: Any) -> int:
    return sum(p.numel() for p in net.parameters())


def run_helios(setup: str, args: argparse.Namespace) -> dict[str, Any]:
    """One rank of a helios setup (``replicated``, ``replicated-view`` or ``sharded``)."""
    import torch
    import torch.nn.functional as F  # noqa: N812
    from torch import nn
    from torch.utils import data as tud

    import helios.data as hld
    import helios.model as hlm
    import helios.trainer as hlt

    block_type, net_type = _make_network_classes()
    world_size = int(os.environ["WORLD_SIZE"])

    class Data(hld.DataModule):
        def setup(self) -> None:
            params = hld.DataLoaderParams(batch_size=args.batch, shuffle=True, drop_last=True)
            dataset = tud.TensorDataset(_inputs(args, world_size))
            self._train_dataset = self._create_dataset(dataset, params)

    class BenchModel(hlm.Model):
        def __init__(self) -> None:
            super().__init__("bench")
            self.recorder: _Recorder | None = None
            self.n_parameters = 0

        def setup(self, fast_init: bool = False) -> None:
            probe = MemoryProbe(self.device)
            self.recorder = _Recorder(probe)
            probe.start()
            torch.manual_seed(SEED)
            net = net_type(args.width, args.blocks).to(self.device)
            self.n_parameters = _count_parameters(net)
            if setup == "sharded":
                self.net = self.shard_network(net, layers=block_type)
            else:
                ids = [self.device.index] if self.device.type == "cuda" else None
                self.net = nn.parallel.DistributedDataParallel(
                    net, device_ids=ids, gradient_as_bucket_view=setup == "replicated-view"
                )
            self.optimizer = torch.optim.AdamW(self.net.parameters(), lr=LR)

        def train(self) -> None:
            self.net.train()

        def train_step(self, batch: Any, state: hlt.TrainingState) -> None:
            recorder = self.recorder
            assert recorder is not None
            recorder.step_start()
            x = batch[0].to(self.device)
            self.optimizer.zero_grad()
            loss = F.mse_loss(self.net(x), x)
            loss.backward()
            recorder.probe.sample()
            self.optimizer.step()
            recorder.probe.sample()
            if len(recorder.marks) == 2:
                recorder.held = held_bytes(self.net, self.optimizer)

        def on_training_end(self) -> None:
            assert self.recorder is not None
            self.recorder.step_start()

    cuda = args.device == "cuda"
    trainer = hlt.Trainer(
        run_name="bench",
        train_unit="epoch",
        total_steps=1,
        use_cpu=not cuda,
        gpus=list(range(int(os.environ["LOCAL_WORLD_SIZE"]))) if cuda else None,
        print_banner=False,
        print_summaries=False,
        chkpt_root=None,
    )
    model = BenchModel()
    data = Data()
    if not trainer.fit(model, data):
        raise SystemExit(1)
    assert model.recorder is not None
    return model.recorder.result(setup, trainer.rank, model.n_parameters)


def run_fsdp2(args: argparse.Namespace, meta: bool = True) -> dict[str, Any]:
    """One rank of the hand-written FSDP2 loop (network built on the meta device, or not)."""
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F  # noqa: N812
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.utils import data as tud

    block_type, net_type = _make_network_classes()
    if args.device == "cuda":
        local_rank = int(os.environ["LOCAL_RANK"])
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    dataset = tud.TensorDataset(_inputs(args, world_size))
    sampler = tud.DistributedSampler(dataset, shuffle=True, seed=SEED, drop_last=True)
    loader = tud.DataLoader(dataset, batch_size=args.batch, sampler=sampler, drop_last=True)

    probe = MemoryProbe(device)
    recorder = _Recorder(probe)
    probe.start()
    # After the baseline, as Model.shard_network makes its mesh after it.
    mesh = init_device_mesh(device.type, (world_size,))
    torch.manual_seed(SEED)
    with torch.device("meta" if meta else device):
        net = net_type(args.width, args.blocks)
    for module in net.modules():
        if isinstance(module, block_type):
            fully_shard(module, mesh=mesh)
    fully_shard(net, mesh=mesh)
    if meta:
        net.to_empty(device=device)
        for module in net.modules():
            reset = getattr(module, "reset_parameters", None)
            if reset is not None:
                reset()
    parameters = _count_parameters(net)
    optimizer = torch.optim.AdamW(net.parameters(), lr=LR)

    net.train()
    sampler.set_epoch(0)
    for (x,) in loader:
        recorder.step_start()
        x = x.to(device)
        optimizer.zero_grad()
        loss = F.mse_loss(net(x), x)
        loss.backward()
        probe.sample()
        optimizer.step()
        probe.sample()
        if len(recorder.marks) == 2:
            recorder.held = held_bytes(net, optimizer)
    recorder.step_start()
    result = recorder.result("fsdp2" if meta else "fsdp2-full", rank, parameters)
    dist.destroy_process_group()
    return result


def run_worker(setup: str, args: argparse.Namespace) -> None:
    """Run one rank of a setup and write its results to ``--out``."""
    import torch

    # Import FSDP2 in every setup before the baseline: the first import of
    # torch.distributed.fsdp puts about 17 MB of module objects on the C heap, a cost of the
    # process, not of the model (Model.shard_network imports it lazily, after the baseline).
    import torch.distributed.fsdp

    torch.set_num_threads(1)
    if setup.startswith("fsdp2"):
        result = run_fsdp2(args, meta=setup == "fsdp2")
    else:
        result = run_helios(setup, args)
    (args.out / f"rank{result['rank']}.json").write_text(json.dumps(result))


# -- the driver ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("localhost", 0))
        return int(sock.getsockname()[1])


def _worker_options(args: argparse.Namespace) -> list[str]:
    options = ["--device", args.device, "--batch", str(args.batch), "--steps", str(args.steps)]
    return [*options, "--width", str(args.width), "--blocks", str(args.blocks)]


def measure(setup: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run one setup in fresh torchrun processes; return its step time and memory."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    with tempfile.TemporaryDirectory() as folder:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={args.nproc}",
            f"--master_port={_free_port()}",
            __file__,
            "--worker",
            setup,
            "--out",
            folder,
            *_worker_options(args),
        ]
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            sys.stderr.write(done.stdout[-4000:] + done.stderr[-8000:])
            raise SystemExit(f"error: the {setup} run failed (exit code {done.returncode})")
        ranks = [json.loads(p.read_text()) for p in pathlib.Path(folder).glob("rank*.json")]
    if len(ranks) != args.nproc:
        raise SystemExit(f"error: the {setup} run wrote {len(ranks)} of {args.nproc} results")
    steps = [len(r["marks"]) - 1 for r in ranks]
    if set(steps) != {args.steps}:
        raise SystemExit(f"error: the {setup} run trained {steps} steps, not {args.steps}")
    per_step = [
        max(r["marks"][i + 1] - r["marks"][i] for r in ranks)
        for i in range(args.warmup, args.steps)
    ]
    cpu_per_step = [
        max(r["cpu_marks"][i + 1] - r["cpu_marks"][i] for r in ranks)
        for i in range(args.warmup, args.steps)
    ]
    return {
        "step": statistics.median(per_step),
        "cpu": statistics.median(cpu_per_step),
        "heap_peak": max(r["heap_peak"] for r in ranks),
        "high_water": max(r["high_water"] for r in ranks),
        "held": max(r["held"] for r in ranks),
        "parameters": ranks[0]["parameters"],
    }


def _check_device(args: argparse.Namespace) -> None:
    if args.device != "cuda":
        return
    import torch

    if not torch.cuda.is_available():
        raise SystemExit(
            f"error: --device cuda needs CUDA, but torch {torch.__version__} sees no usable "
            "GPU (torch.cuda.is_available() is False); run with --device cpu"
        )
    if torch.cuda.device_count() < args.nproc:
        raise SystemExit(
            f"error: --device cuda runs one GPU per rank, but --nproc={args.nproc} and only "
            f"{torch.cuda.device_count()} GPU(s) are visible; lower --nproc"
        )


def _mb(value: float) -> str:
    return f"{value / 2**20:.1f}"


def report(results: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> None:
    """Print the table and the ratios against the goals."""
    setups = [s for s in SETUPS if s in results]
    step = {s: statistics.median(r["step"] for r in results[s]) for s in setups}
    best = {s: min(r["step"] for r in results[s]) for s in setups}
    cpu = {s: statistics.median(r["cpu"] for r in results[s]) for s in setups}
    heap = {s: statistics.median(r["heap_peak"] for r in results[s]) for s in setups}
    parameters = results[setups[0]][0]["parameters"]
    where = "C heap (mallinfo2)" if args.device == "cpu" else "torch.cuda.memory_allocated"
    high = "ru_maxrss" if args.device == "cpu" else "max_memory_allocated"
    print(
        f"{parameters / 1e6:.1f}M parameters ({args.blocks} blocks of width {args.width}), "
        f"{args.nproc} ranks on {args.device}, batch {args.batch} per rank, {args.steps} steps "
        f"({args.warmup} warm-up), {args.repeats} interleaved runs per setup, "
        f"{os.cpu_count()} CPU(s)\n"
    )
    print(
        f"| setup | step, median of runs (ms) | step, best run (ms) | CPU time per step (ms) | "
        f"peak {where} per rank (MB) | tensors held per rank (MB) | {high} above baseline "
        "(MB) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for s in setups:
        runs = results[s]
        print(
            f"| {s} | {step[s] * 1e3:.1f} | {best[s] * 1e3:.1f} | {cpu[s] * 1e3:.1f} | "
            f"{_mb(heap[s])} | "
            f"{_mb(statistics.median(r['held'] for r in runs))} | "
            f"{_mb(statistics.median(r['high_water'] for r in runs))} |"
        )
    print()
    if "sharded" in step and "fsdp2" in step:
        pairs = statistics.median(
            a["step"] / b["step"] for a, b in zip(results["sharded"], results["fsdp2"])
        )
        verdict = "met" if pairs <= 1.03 else "NOT met"
        print(
            f"* step time, sharded / fsdp2: **{pairs:.3f}x** (median of the ratios of each "
            f"sharded run to the fsdp2 run right after it; ratio of the medians "
            f"{step['sharded'] / step['fsdp2']:.3f}x, of the best runs "
            f"{best['sharded'] / best['fsdp2']:.3f}x, of the CPU times "
            f"{cpu['sharded'] / cpu['fsdp2']:.3f}x); goal <= 1.03x: {verdict}"
        )
    for base in ("replicated-view", "replicated"):
        if "sharded" in heap and base in heap:
            ratio = heap["sharded"] / heap[base]
            verdict = "met" if ratio <= 0.55 else "NOT met"
            print(
                f"* peak memory per rank, sharded / {base}: **{ratio:.3f}x**; goal <= 0.55x: "
                f"{verdict}"
            )
    for plain in ("fsdp2", "fsdp2-full"):
        if plain in heap and "replicated-view" in heap:
            ratio = heap[plain] / heap["replicated-view"]
            print(f"* peak memory per rank, {plain} / replicated-view: {ratio:.3f}x")
    for base in ("replicated-view", "replicated"):
        if "sharded" in step and base in step:
            print(f"* step time, sharded / {base}: {step['sharded'] / step[base]:.3f}x")


def main(argv: list[str]) -> int:
    """Run the benchmark (or, with ``--worker``, one rank of one setup)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--nproc", type=int, default=2, help="ranks (processes)")
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--blocks", type=int, default=6)
    parser.add_argument("--batch", type=int, default=8, help="samples per rank and step")
    parser.add_argument("--steps", type=int, default=20, help="steps per run")
    parser.add_argument("--warmup", type=int, default=5, help="steps left out of the timing")
    parser.add_argument("--repeats", type=int, default=3, help="runs per setup, interleaved")
    parser.add_argument(
        "--setups", nargs="+", choices=SETUPS, default=list(DEFAULT_SETUPS), help="setups to run"
    )
    parser.add_argument("--worker", choices=SETUPS, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=pathlib.Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        run_worker(args.worker, args)
        return 0
    if not 0 <= args.warmup < args.steps:
        parser.error(f"--warmup={args.warmup} must be at least 0 and below --steps={args.steps}")
    if args.nproc < 2:
        parser.error(f"--nproc={args.nproc}: sharding needs at least 2 processes")
    _check_device(args)

    results: dict[str, list[dict[str, Any]]] = {s: [] for s in args.setups}
    for repeat in range(args.repeats):
        for setup in args.setups:
            result = measure(setup, args)
            results[setup].append(result)
            print(
                f"run {repeat + 1}/{args.repeats} {setup}: step {result['step'] * 1e3:.1f} ms, "
                f"heap peak {_mb(result['heap_peak'])} MB",
                file=sys.stderr,
                flush=True,
            )
    report(results, args)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
