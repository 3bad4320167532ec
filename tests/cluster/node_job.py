"""The training job of the cluster tests: one process of a torchrun job, or a plain script.

Run as ``python node_job.py OUT CHKPT_ROOT [options]`` under ``torchrun`` (any number of
nodes and processes; gloo on the CPU), under ``srun``, or alone. It trains a stack of
residual blocks on fixed regression samples with the Trainer (ITERATION unit, a checkpoint
after every iteration, deterministic), replicated with DDP (``--sharding ddp``) or sharded
with FSDP2 (``--sharding fsdp``); ``--sharding both`` runs the two fits one after the other
in the same processes (``chkpt_root/ddp`` and ``chkpt_root/fsdp``). The global batch is
``GLOBAL_BATCH`` whatever the number of processes, each rank taking its share.

Outputs, in ``OUT`` (which every rank must see):

* ``batches<rank>_<sharding>.jsonl``: one line per trained batch (iteration, epoch,
  sample ids, local loss, pid, hostname), appended;
* ``final_<sharding>.pt``: the full weights at the end (rank 0);
* ``seen<rank>_<sharding>.json``: the ranks the model, the trainer and the launcher
  gave this process, and its hostname.

``--step-sleep S`` sleeps S seconds in every step (room for a test to interrupt the
job); ``--iterations N`` sets the length of the run; ``--dist-timeout S`` is the Trainer's
``dist_timeout``; ``--stall-at N`` makes the last rank stop before iteration N as if its
machine froze (it exits on SIGTERM, which ``torchrun`` sends when another rank fails).
The job prints one line ``PREEMPTED <signal> <code>`` when a signal stopped it, and exits
with the code the Trainer gives (128 + the signal number).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import signal
import socket
import sys
import time
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn
from torch.utils.data import Dataset

import helios.data as hld
import helios.model as hlm
import helios.trainer as hlt

NUM_SAMPLES = 48
GLOBAL_BATCH = 12
WIDTH = 16


class Samples(Dataset):
    """Fixed regression samples ``(id, x, y)``."""

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(1234)
        self.x = torch.randn(NUM_SAMPLES, WIDTH, generator=generator)
        self.y = torch.randn(NUM_SAMPLES, 1, generator=generator)

    def __len__(self) -> int:
        return NUM_SAMPLES

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return torch.tensor(index), self.x[index], self.y[index]


class Data(hld.DataModule):
    def setup(self) -> None:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        params = hld.DataLoaderParams(batch_size=GLOBAL_BATCH // world_size, shuffle=True)
        self._train_dataset = self._create_dataset(Samples(), params)


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(WIDTH)
        self.linear = nn.Linear(WIDTH, WIDTH)
        self.dropout = nn.Dropout(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.dropout(torch.tanh(self.linear(self.norm(x))))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block() for _ in range(2))
        self.head = nn.Linear(WIDTH, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x)


class NodeModel(hlm.Model):
    def __init__(self, args: argparse.Namespace, sharding: str) -> None:
        super().__init__(sharding)
        self.args = args
        self.sharding = sharding

    def setup(self, fast_init: bool = False) -> None:
        torch.manual_seed(0)
        net = Net().to(self.device)
        if self.sharding == "fsdp":
            self.net = self.shard_network(net, layers=Block)
        elif self.is_distributed:
            self.net = nn.parallel.DistributedDataParallel(net)
        else:
            self.net = net
        self.optimizer = torch.optim.AdamW(self.net.parameters(), lr=0.01)

    def _plain(self) -> nn.Module:
        net = self.net
        return net.module if isinstance(net, nn.parallel.DistributedDataParallel) else net

    def train(self) -> None:
        self.net.train()

    def on_training_start(self) -> None:
        rank = int(os.environ.get("RANK", "0"))
        seen = {
            "hostname": socket.gethostname(),
            "model_rank": self.rank,
            "trainer_rank": self.trainer.rank,
            "trainer_local_rank": self.trainer.local_rank,
            "env": {
                key: os.environ.get(key)
                for key in ("RANK", "LOCAL_RANK", "GROUP_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE")
            },
        }
        for name in ("global_rank", "local_rank"):  # where the model offers them
            if hasattr(type(self), name):
                seen[f"model_{name}"] = getattr(self, name)
        path = self.args.out / f"seen{rank}_{self.sharding}.json"
        path.write_text(json.dumps(seen))

    def train_step(self, batch: Any, state: hlt.TrainingState) -> None:
        ids, x, y = batch
        if state.global_iteration == self.args.stall_at and self._is_last_rank():
            _stall()
        loss = F.mse_loss(self.net(x.to(self.device)), y.to(self.device))
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()
        self._loss_items["loss"] = loss.detach()
        if self.args.step_sleep:
            time.sleep(self.args.step_sleep)
        record = {
            "iteration": state.global_iteration,
            "epoch": state.global_epoch,
            "ids": ids.tolist(),
            "loss": loss.item(),
            "pid": os.getpid(),
            "host": socket.gethostname(),
        }
        rank = int(os.environ.get("RANK", "0"))
        _append(self.args.out / f"batches{rank}_{self.sharding}.jsonl", json.dumps(record))

    def _is_last_rank(self) -> bool:
        return int(os.environ.get("RANK", "0")) == int(os.environ.get("WORLD_SIZE", "1")) - 1

    def on_training_end(self) -> None:
        weights = {key: _full(value) for key, value in self._plain().state_dict().items()}
        if int(os.environ.get("RANK", "0")) == 0:
            torch.save(weights, self.args.out / f"final_{self.sharding}.pt")


def _stall() -> None:
    """Hang (never reach the next collective) until SIGTERM, then leave at once."""
    print("STALLED", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(143))
    time.sleep(300)
    os._exit(1)


def _full(value: torch.Tensor) -> torch.Tensor:
    full = getattr(value, "full_tensor", None)  # a DTensor shard: gather it (collective)
    return (full() if full is not None else value).detach().clone()


def _append(path: pathlib.Path, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def fit(args: argparse.Namespace, sharding: str) -> bool:
    trainer = hlt.Trainer(
        run_name=sharding,
        train_unit=hlt.TrainingUnit.ITERATION,
        total_steps=args.iterations,
        chkpt_frequency=1,
        chkpt_root=args.chkpt_root,
        use_cpu=True,
        random_seed=7,
        enable_deterministic=True,
        enable_progress_bar=False,
        print_banner=False,
        print_summaries=False,
        dist_timeout=args.dist_timeout,
    )
    return trainer.fit(NodeModel(args, sharding), Data())


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=pathlib.Path)
    parser.add_argument("chkpt_root", type=pathlib.Path)
    parser.add_argument("--sharding", choices=["ddp", "fsdp", "both"], default="ddp")
    parser.add_argument("--iterations", type=int, default=12)
    parser.add_argument("--step-sleep", type=float, default=0.0)
    parser.add_argument("--dist-timeout", type=float, default=None)
    parser.add_argument("--stall-at", type=int, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    shardings = ["ddp", "fsdp"] if args.sharding == "both" else [args.sharding]
    try:
        for sharding in shardings:
            if not fit(args, sharding):
                return 1
    except hlt.Preempted as stopped:
        print(f"PREEMPTED {stopped.signal_name} {stopped.code}", flush=True)
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
