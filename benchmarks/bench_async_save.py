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

Mode ``store`` saves to S3 instead (``chkpt_root="s3://..."``): moto's S3 server, started
on localhost by the script, reached through s3fs; such saves always upload in the
background, so its blocked time is the snapshot plus any wait for the previous upload. The
ratio against the synchronous local save is the store's figure.

Usage (from the repository root; about 2 GB of disk in a temporary folder)::

    python benchmarks/bench_async_save.py
    python benchmarks/bench_async_save.py --repeats 3 --saves 4 --dir /some/disk

Also printed for mode ``store``: the wait for the previous upload within the blocked time,
the time of each background upload, and the time s3fs alone takes to upload the same bytes
to the same server (what is the server's, not helios'). A save to a store blocks for the
snapshot only when the upload finishes within the training time between two saves
(``--store-steps``); otherwise training also waits for the store.

Goal: blocked time of an asynchronous save, and of a save to a store, <= 20% of the
synchronous local save.
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
    folder: Any, asynchronous: bool, args: argparse.Namespace, steps_between: int
) -> tuple[list[float], list[float], list[float], int, dict[str, list[float]]]:
    """Train once; return the blocked time and snapshot time of each save, the step times,
    the file size, and the waits for the previous write and the background write times."""
    import torch
    from torch import nn

    import helios.data as hld
    import helios.model as hlm
    import helios.trainer as hlt
    from helios.trainer.checkpoint import run_checkpoint as checkpoints
    from helios.trainer.checkpoint.async_save import BackgroundWriter
    from helios.trainer.checkpoint.store import StoreFolder

    width = int(math.sqrt(args.params / args.layers))
    blocked: list[float] = []
    copies: list[float] = []
    steps: list[float] = []
    background: dict[str, list[float]] = {"wait": [], "write": []}
    waiting: list[float] = []  # the waits of the save in progress

    class Data(torch.utils.data.Dataset):  # type: ignore[type-arg]
        def __len__(self) -> int:
            return steps_between * args.saves * args.batch

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
        waiting.clear()
        try:
            return real_save(self, state)
        finally:
            blocked.append(time.perf_counter() - started)
            background["wait"].append(sum(waiting))  # the waits for the previous write

    def timed_snapshot(contents: Any, buffers: Any = None) -> Any:
        started = time.perf_counter()
        try:
            return real_snapshot(contents, buffers)
        finally:
            copies.append(time.perf_counter() - started)

    real_wait, real_write = BackgroundWriter.wait, StoreFolder.write

    def timed_wait(self: Any) -> None:
        started = time.perf_counter()
        try:
            real_wait(self)
        finally:
            waiting.append(time.perf_counter() - started)

    def timed_write(self: Any, contents: Any, name: str) -> None:
        started = time.perf_counter()
        try:
            real_write(self, contents, name)
        finally:
            background["write"].append(time.perf_counter() - started)

    checkpoints.RunCheckpoint.save = timed_save  # type: ignore[method-assign]
    checkpoints.snapshot = timed_snapshot
    BackgroundWriter.wait = timed_wait  # type: ignore[method-assign]
    StoreFolder.write = timed_write  # type: ignore[method-assign]
    try:
        trainer = hlt.Trainer(
            train_unit="iteration",
            total_steps=args.saves,
            accumulation_steps=steps_between,
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
        BackgroundWriter.wait = real_wait  # type: ignore[method-assign]
        StoreFolder.write = real_write  # type: ignore[method-assign]
    newest = hlt.find_last_checkpoint(f"{folder}/big")
    assert newest is not None
    size = pathlib.Path(newest).stat().st_size if isinstance(newest, pathlib.Path) else 0
    return blocked, copies, steps, size, background


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=float, default=100e6, help="about this many weights")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--saves", type=int, default=4, help="checkpoints per run")
    parser.add_argument("--steps", type=int, default=4, help="batches between checkpoints")
    parser.add_argument(
        "--store-steps",
        type=int,
        default=None,
        help="batches between checkpoints in mode store (default: --steps)",
    )
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2, help="runs per mode")
    parser.add_argument("--dir", type=pathlib.Path, default=None, help="where to write")
    parser.add_argument("--modes", default="sync,async,store", help="comma list")
    args = parser.parse_args(argv)
    modes = args.modes.split(",")

    import torch

    torch.set_num_threads(1)
    root = pathlib.Path(tempfile.mkdtemp(prefix="bench_async_save_", dir=args.dir))
    results: dict[str, dict[str, list[float]]] = {
        mode: {"blocked": [], "steps": [], "wait": [], "write": [], "snapshot": []}
        for mode in modes
    }
    raw_uploads: list[float] = []
    size = 0
    server = _start_s3_server() if "store" in modes else None
    try:
        for repeat in range(args.repeats):
            for mode in modes:
                folder: Any = root / f"{mode}_{repeat}"
                if mode == "store":
                    folder = f"s3://bench/{mode}_{repeat}"
                between = args.steps
                if mode == "store" and args.store_steps is not None:
                    between = args.store_steps
                blocked, copies, steps, run_size, background = run_once(
                    folder, mode == "async", args, between
                )
                size = run_size or size
                if mode != "store":
                    shutil.rmtree(folder)
                else:
                    raw_uploads.append(_raw_upload(f"{folder}/big"))
                results[mode]["blocked"] += blocked[1:]
                results[mode]["steps"] += steps
                results[mode]["snapshot"] += copies[1:]
                results[mode]["wait"] += background["wait"][1:]
                results[mode]["write"] += background["write"]
                print(
                    f"run {repeat} {mode:5s}: blocked per save "
                    + ", ".join(f"{b:.3f}" for b in blocked)
                    + " s"
                    + (f" (snapshot {', '.join(f'{c:.3f}' for c in copies)} s)" if copies else "")
                    + f"; mean step {statistics.mean(steps):.3f} s"
                    + (
                        f"; background writes {', '.join(f'{w:.2f}' for w in background['write'])}"
                        f" s; raw upload of the same bytes {raw_uploads[-1]:.2f} s"
                        if mode == "store"
                        else ""
                    ),
                    flush=True,
                )
    finally:
        shutil.rmtree(root, ignore_errors=True)
        if server is not None:
            server.terminate()
            server.wait()

    sync_blocked = statistics.median(results["sync"]["blocked"])
    print()
    print(f"checkpoint size: {size / 1e6:.0f} MB; torch {torch.__version__}, 1 torch thread")
    print("| mode  | blocked per save (median) | min   | max   | mean step |")
    print("|-------|---------------------------|-------|-------|-----------|")
    for mode in modes:
        entry = results[mode]
        print(
            f"| {mode:5s} | {statistics.median(entry['blocked']):25.3f} s"
            f" | {min(entry['blocked']):.3f} | {max(entry['blocked']):.3f}"
            f" | {statistics.mean(entry['steps']):7.3f} s |"
        )
    for mode in modes[1:] if modes[0] == "sync" else []:
        ratio = statistics.median(results[mode]["blocked"]) / sync_blocked
        print(f"{mode} blocked / sync local save: {ratio:.1%} (goal <= 20%)")
    if "store" in modes and "sync" in modes:
        # What is helios and what is the server: the blocked time of a save to the store is
        # helios' snapshot plus the wait for the previous upload, which lasts as long as the
        # store takes to accept the bytes beyond the training time between two saves.
        store = results["store"]
        snap, wait = statistics.median(store["snapshot"]), statistics.median(store["wait"])
        write, raw = statistics.median(store["write"]), statistics.median(raw_uploads)
        own = [b - w for b, w in zip(store["blocked"], store["wait"], strict=True)]
        print(
            f"store: snapshot {snap:.3f} s + wait for the previous upload {wait:.3f} s "
            f"(medians); a background upload takes {write:.2f} s, the raw s3fs upload of "
            f"the same bytes to the same server {raw:.2f} s"
        )
        print(
            f"store blocked without the wait for the server / sync local save: "
            f"{statistics.median(own) / sync_blocked:.1%}; helios' "
            f"upload over the raw upload: {write / raw:.2f}x"
        )
    return 0


def _raw_upload(folder: str) -> float:
    """Seconds s3fs takes to upload the bytes of the newest checkpoint in ``folder`` again,
    straight (no helios): the server's and the client's share of an upload."""
    import s3fs

    import helios.trainer as hlt

    newest = hlt.find_last_checkpoint(folder)
    assert newest is not None
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    data = fs.cat_file(str(newest))
    started = time.perf_counter()
    fs.pipe_file(f"{folder}-raw-upload", data)
    elapsed = time.perf_counter() - started
    fs.rm(f"{folder}-raw-upload")
    return elapsed


def _start_s3_server() -> Any:
    """Start moto's S3 server on a free localhost port; point the AWS environment at it."""
    import os
    import socket
    import subprocess
    import urllib.request

    import s3fs

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            urllib.request.urlopen(f"{url}/moto-api/", timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    os.environ.update(
        AWS_ENDPOINT_URL=url,
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
    )
    s3fs.S3FileSystem().mkdir("bench")
    return process


if __name__ == "__main__":
    sys.exit(main())
