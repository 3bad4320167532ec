"""Time training is blocked per checkpoint: asynchronous against synchronous saves.

A model of about 100M parameters (an MLP of ``--layers`` square linear layers, float32,
about 400 MB; plain SGD, so the checkpoint is the weights) trains with ``Trainer.fit`` on
the CPU for ``--saves`` iterations of ``--steps`` batches, with a checkpoint after each
iteration. The blocked time of a checkpoint is the time the training thread spends inside
the Trainer's save call: for a synchronous save the whole write (torch.save, fsync, rename);
for an asynchronous one the snapshot (a copy of the state to the CPU) plus any wait for the
previous background write (the snapshot alone is printed too). Runs alternate sync,
async, sync, ... (``--repeats`` each); the first checkpoint of each run is left out (it
pays for first-touch page faults of fresh buffers). Also reported: the mean step time in
each mode, which shows what the background write costs the training steps on a machine
with few cores.

Usage (from the repository root; about 2 GB of disk in a temporary folder)::

    python benchmarks/bench_async_save.py
    python benchmarks/bench_async_save.py --repeats 3 --saves 4 --dir /some/disk

Goal: blocked time of an asynchronous save <= 20% of the synchronous save.
"""

from __future__ import annotations

import argparse
import math
import pathlib
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any


def run_once(
    folder: pathlib.Path, asynchronous: bool, args: argparse.Namespace
) -> tuple[list[float], list[float], list[float], int]:
    """Train once; return the blocked time and snapshot time of each save, the step times
    and the file size."""
    import torch
    from torch import nn

    import helios.data as hld
    import helios.model as hlm
    import helios.trainer as hlt
    from helios.trainer.checkpoint import run_checkpoint as checkpoints

    width = int(math.sqrt(args.params / args.layers))
    blocked: list[float] = []
    copies: list[float] = []
    steps: list[float] = []

    class Data(torch.utils.data.Dataset):  # type: ignore[type-arg]
        def __len__(self) -> int:
            return args.steps * args.saves * args.batch

        def __getitem__(self, index: int) -> torch.Tensor:
            return torch.full((width,), float(index % 7) / 7.0)

    class BigData(hld.DataModule):
        def setup(self) -> None:
            self._train_dataset = self._create_dataset(
                Data(), hld.DataLoaderParams(batch_size=args.batch)
            )

    class BigModel(hlm.Model):
        def setup(self, fast_init: bool = False) -> None:
            torch.manual_seed(0)
            self.net = nn.Sequential(*(nn.Linear(width, width) for _ in range(args.layers)))
            self.optimizer = torch.optim.SGD(self.net.parameters(), lr=1e-6)

        def state_dict(self) -> dict[str, Any]:
            return {"net": self.net.state_dict(), "optimizer": self.optimizer.state_dict()}

        def train_step(self, batch: Any, state: hlt.TrainingState) -> None:
            started = time.perf_counter()
            self.optimizer.zero_grad()
            loss = self.net(batch).square().mean()
            loss.backward()
            self.optimizer.step()
            self._loss_items["loss"] = loss.detach()
            steps.append(time.perf_counter() - started)

    real_save, real_snapshot = checkpoints.RunCheckpoint.save, checkpoints.snapshot

    def timed_save(self: Any, state: Any) -> Any:
        started = time.perf_counter()
        try:
            return real_save(self, state)
        finally:
            blocked.append(time.perf_counter() - started)

    def timed_snapshot(contents: Any, buffers: Any = None) -> Any:
        started = time.perf_counter()
        try:
            return real_snapshot(contents, buffers)
        finally:
            copies.append(time.perf_counter() - started)

    checkpoints.RunCheckpoint.save = timed_save  # type: ignore[method-assign]
    checkpoints.snapshot = timed_snapshot
    try:
        trainer = hlt.Trainer(
            train_unit="iteration",
            total_steps=args.saves,
            accumulation_steps=args.steps,
            chkpt_frequency=1,
            chkpt_root=folder,
            chkpt_keep_last=1,
            chkpt_async=asynchronous,
            use_cpu=True,
            print_banner=False,
        )
        trainer.train_exceptions.append(Exception)
        assert trainer.fit(BigModel("big"), BigData())
    finally:
        checkpoints.RunCheckpoint.save = real_save  # type: ignore[method-assign]
        checkpoints.snapshot = real_snapshot
    newest = hlt.find_last_checkpoint(folder / "big")
    assert newest is not None
    return blocked, copies, steps, newest.stat().st_size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=float, default=100e6, help="about this many weights")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--saves", type=int, default=4, help="checkpoints per run")
    parser.add_argument("--steps", type=int, default=4, help="batches between checkpoints")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2, help="runs per mode")
    parser.add_argument("--dir", type=pathlib.Path, default=None, help="where to write")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    root = pathlib.Path(tempfile.mkdtemp(prefix="bench_async_save_", dir=args.dir))
    results: dict[str, dict[str, list[float]]] = {
        mode: {"blocked": [], "steps": []} for mode in ("sync", "async")
    }
    size = 0
    try:
        for repeat in range(args.repeats):
            for mode in ("sync", "async"):
                folder = root / f"{mode}_{repeat}"
                blocked, copies, steps, size = run_once(folder, mode == "async", args)
                shutil.rmtree(folder)
                results[mode]["blocked"] += blocked[1:]
                results[mode]["steps"] += steps
                print(
                    f"run {repeat} {mode:5s}: blocked per save "
                    + ", ".join(f"{b:.3f}" for b in blocked)
                    + " s"
                    + (f" (snapshot {', '.join(f'{c:.3f}' for c in copies)} s)" if copies else "")
                    + f"; mean step {statistics.mean(steps):.3f} s",
                    flush=True,
                )
    finally:
        shutil.rmtree(root, ignore_errors=True)

    sync_blocked = statistics.median(results["sync"]["blocked"])
    async_blocked = statistics.median(results["async"]["blocked"])
    print()
    print(f"checkpoint size: {size / 1e6:.0f} MB; torch {torch.__version__}, 1 torch thread")
    print("| mode  | blocked per save (median) | min   | max   | mean step |")
    print("|-------|---------------------------|-------|-------|-----------|")
    for mode in ("sync", "async"):
        entry = results[mode]
        print(
            f"| {mode:5s} | {statistics.median(entry['blocked']):25.3f} s"
            f" | {min(entry['blocked']):.3f} | {max(entry['blocked']):.3f}"
            f" | {statistics.mean(entry['steps']):7.3f} s |"
        )
    print(f"async blocked / sync save: {async_blocked / sync_blocked:.1%} (goal <= 20%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
