"""A small training job on a stream, for the exact-resume tests of streams.

Run as a script (alone, or under ``torchrun``) it trains until done, then writes the final
weights to ``<workdir>/final<rank>.pt``::

    python stream_job.py WORKDIR [--workers W] [--total-steps N] [--stateless]
        [--stream-resume restart|skip] [--step-sleep S]

The stream (:py:class:`NoisyStream`) yields ``(id, x, y)`` for ``NUM_SAMPLES`` ids in an
order that changes with the epoch; every ``x`` gets noise from torch, ``random``, NumPy's
legacy generator and the helios default generator, drawn where the sample is made (in the
loader workers). Every batch appends one JSON line to ``<workdir>/batches<rank>.jsonl`` (a
single ``os.write`` on an ``O_APPEND`` file, so a SIGKILL never leaves half a line): the
process id, the global iteration, the epoch, the ids, the sum of the noisy inputs and the
loss. The job trains in the ITERATION unit with a checkpoint after every iteration, so a
kill lands inside an epoch.

The tests import this file for its stream and model; it has no side effects at import.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import random
import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import IterableDataset

import helios.data as hld
import helios.model as hlm
import helios.trainer as hlt
from helios.core import rng

NUM_SAMPLES = 48
BATCH_SIZE = 4
SAVE_NAME = "stream"


class StatelessStream(IterableDataset):
    """``(id, x, y)`` for ``size`` ids, reordered every epoch, with noise on ``x``.

    It reads only its part of the stream once told (``select_part``).
    """

    def __init__(self, size: int = NUM_SAMPLES) -> None:
        generator = torch.Generator().manual_seed(1234)
        self.size = size
        self.x = torch.randn(size, 3, generator=generator)
        self.y = torch.randn(size, 1, generator=generator)
        self.epoch = 0
        self.part = (0, 1)
        self._start = 0
        self._next = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def select_part(self, index: int, count: int) -> None:
        self.part = (index, count)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(100 + self.epoch))
        index, count = self.part
        mine = order.tolist()[index::count]
        start, self._start = self._start, 0
        for position in range(start, len(mine)):
            self._next = position + 1
            i = mine[position]
            noise = torch.rand(3) + random.random() + float(np.random.rand())
            noise = noise + float(rng.get_default_numpy_rng().generator.random())
            yield torch.tensor(i), self.x[i] + 0.1 * noise, self.y[i]


class NoisyStream(StatelessStream):
    """The same stream, with its position as its state."""

    def state_dict(self) -> dict[str, int]:
        return {"next": self._next}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._start = state["next"]


class StreamDataModule(hld.DataModule):
    def __init__(self, workers: int, stateless: bool = False, resume: str = "restart") -> None:
        super().__init__()
        self.workers, self.stateless, self.resume = workers, stateless, resume

    def setup(self) -> None:
        stream = StatelessStream() if self.stateless else NoisyStream()
        params = hld.DataLoaderParams(
            batch_size=BATCH_SIZE, num_workers=self.workers, stream_resume=self.resume
        )
        self._train_dataset = self._create_dataset(stream, params)


class StreamModel(hlm.Model):
    """An MLP with dropout; each step records what it trained on."""

    def __init__(
        self,
        record_path: pathlib.Path | None = None,
        step_sleep: float = 0.0,
        crash_at: int | None = None,
    ) -> None:
        super().__init__(SAVE_NAME)
        self.record_path = record_path
        self.step_sleep = step_sleep
        self.crash_at = crash_at
        self.records: list[dict[str, Any]] = []

    def setup(self, fast_init: bool = False) -> None:
        self.net = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, 1))
        if self.is_distributed:
            self.net = nn.parallel.DistributedDataParallel(self.net)
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=0.05, momentum=0.9)

    def _plain_net(self) -> nn.Module:
        net = self.net
        return net.module if isinstance(net, nn.parallel.DistributedDataParallel) else net

    def state_dict(self) -> dict[str, Any]:
        # The plain network's weights: a checkpoint of any number of processes loads.
        return {"net": self._plain_net().state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any], fast_init: bool = False) -> None:
        self._plain_net().load_state_dict(state_dict["net"])
        self.optimizer.load_state_dict(state_dict["optimizer"])

    def train(self) -> None:
        self.net.train()

    def eval(self) -> None:
        self.net.eval()

    def train_step(self, batch: Any, state: hlt.TrainingState) -> None:
        ids, x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y + 0.1 * torch.randn_like(y))
        loss.backward()
        record = {
            "pid": os.getpid(),
            "gi": state.global_iteration,
            "epoch": state.global_epoch,
            "ids": ids.tolist(),
            "inputs": float(x.sum()),
            "loss": float(loss.item()),
        }
        self.records.append(record)
        if self.record_path is not None:
            fd = os.open(self.record_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, (json.dumps(record) + "\n").encode())
            finally:
                os.close(fd)
        if self.crash_at == state.global_iteration:
            raise RuntimeError(f"crash requested at global iteration {self.crash_at}")
        if self.step_sleep:
            time.sleep(self.step_sleep)
        self.optimizer.step()
        self.optimizer.zero_grad()
        self._loss_items["loss"] = loss.detach()

    def weights(self) -> dict[str, torch.Tensor]:
        net = (
            self.net.module
            if isinstance(self.net, nn.parallel.DistributedDataParallel)
            else self.net
        )
        return {k: v.detach().clone() for k, v in net.state_dict().items()}


def make_trainer(workdir: pathlib.Path, total_steps: int) -> hlt.Trainer:
    return hlt.Trainer(
        run_name="stream",
        train_unit="iteration",
        total_steps=total_steps,
        chkpt_frequency=1,
        chkpt_root=workdir / "chkpt",
        use_cpu=True,
        enable_deterministic=True,
        print_banner=False,
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("workdir", type=pathlib.Path)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--total-steps", type=int, default=30)
    parser.add_argument("--stateless", action="store_true")
    parser.add_argument("--stream-resume", default="restart")
    parser.add_argument("--step-sleep", type=float, default=0.0)
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    model = StreamModel(args.workdir / f"batches{rank}.jsonl", step_sleep=args.step_sleep)
    data = StreamDataModule(args.workers, args.stateless, args.stream_resume)
    if not make_trainer(args.workdir, args.total_steps).fit(model, data):
        return 1
    torch.save(
        model.weights(),
        args.workdir / f"final{rank}.pt",
    )
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
