"""A training job whose model is sharded with FSDP2, for the sharding tests.

Under ``torchrun`` (gloo, CPU), or as a plain script for one process without a process
group::

    shard_job.py WORKDIR [--kill-at N] [--kill-in-commit N] [--explicit-state]
                 [--precision P] [--dropout P] [--keep-last K]

It trains a stack of residual MLP blocks (``Model.shard_network``: one FSDP unit per block
and the root) with AdamW, in the ITERATION unit, with a checkpoint after every iteration
(``--chkpt-every``) and a validation every 4. The global batch is ``GLOBAL_BATCH`` whatever
the number of processes (each rank takes ``GLOBAL_BATCH / world_size`` samples per step), so
runs on 1, 2 and 3 processes take the same steps up to float rounding.

* ``--kill-at N``: rank 1 (rank 0 alone) sends itself SIGKILL when iteration N starts.
* ``--kill-in-commit N``: rank 0 sends itself SIGKILL at the N-th save of this process,
  after every rank wrote its shards and before the checkpoint folder is committed.
* ``--kill-writing-contents N``: rank 0 sends itself SIGKILL in the middle of writing the
  N-th save's ``helios.pth`` (half of it written and flushed), inside the commit.
* ``--explicit-state``: the model writes ``state_dict``/``load_state_dict`` itself, as the
  seeds show, instead of the default state.
* ``--meta-init``: the network is built on the meta device, sharded, then materialised
  (each rank allocates only its shards) and initialised.
* ``--hidden-network``: the sharded network is kept two levels deep in a dict attribute,
  where the trainer does not find it (its first save must fail, on every rank).
* ``--async-save``: ``chkpt_async=True``.
* ``--replicate``: the network is wrapped in DDP instead of sharded (one-file checkpoints).
* ``--term-at N``: rank 0 sends itself SIGTERM when iteration N starts (a preemption).
* ``--chkpt-every N``: a checkpoint every N iterations instead of every one.
* ``--test``: after training, ``Trainer.test`` of the newest checkpoint; each rank appends
  the sample ids and outputs of its test batches to ``tested<rank>.jsonl``.

Each rank appends one JSON line per batch to ``batches<rank>.jsonl`` (iteration, sample
ids, loss); rank 0 writes ``final.pt`` (the full weights at the end, gathered from the
shards) and ``result.json`` (which modules were sharded, the dtypes of the output and of a
block's weight in the forward pass, the world size).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pathlib
import signal
import sys
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))  # tests/, for toys

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

import helios.data as hld
import helios.model as hlm
import helios.trainer as hlt
import toys
from helios.trainer.checkpoint import run_checkpoint

NUM_SAMPLES = 48
GLOBAL_BATCH = 12
TOTAL_ITERATIONS = 10
WIDTH = 16
SAVE_NAME = "sharded"


def samples(size: int, seed: int = 1234) -> toys.IndexedSamples:
    """Fixed regression samples ``(id, x, y)`` with ``WIDTH`` features."""
    return toys.IndexedSamples(size, seed, features=WIDTH)


class Data(hld.DataModule):
    def setup(self) -> None:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        batch = hld.DataLoaderParams(batch_size=GLOBAL_BATCH // world_size, shuffle=True)
        self._train_dataset = self._create_dataset(samples(NUM_SAMPLES), batch)
        valid = hld.DataLoaderParams(batch_size=4, shuffle=False)
        self._valid_dataset = self._create_dataset(samples(8, seed=99), valid)
        self._test_dataset = self._create_dataset(samples(8, seed=5), valid)


class Block(nn.Module):
    def __init__(self, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(WIDTH)
        self.linear = nn.Linear(WIDTH, WIDTH)
        self.dropout = nn.Dropout(dropout)
        self.weight_dtype = ""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.weight_dtype = str(self.linear.weight.dtype)  # as gathered for the forward
        return x + self.dropout(torch.tanh(self.linear(self.norm(x))))


class Net(nn.Module):
    """Three blocks in a ``ModuleList`` and a head: four FSDP units and the root."""

    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(dropout) for _ in range(3))
        self.head = nn.Linear(WIDTH, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x)


class ShardedModel(hlm.Model):
    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(SAVE_NAME)
        self.args = args
        self.forward_dtype = ""

    def setup(self, fast_init: bool = False) -> None:
        torch.manual_seed(0)
        if self.args.meta_init:
            with torch.device("meta"):
                net = Net(self.args.dropout)
            self.net = self.shard_network(net, layers=Block)
            self.net.to_empty(device=self.device)
            for module in self.net.modules():
                if isinstance(module, nn.Linear | nn.LayerNorm):
                    module.reset_parameters()
            self.optimizer = torch.optim.AdamW(self.net.parameters(), lr=0.01)
            return
        net = Net(self.args.dropout).to(self.device)
        if self.args.replicate:
            self.net = nn.parallel.DistributedDataParallel(net) if self.is_distributed else net
        else:
            self.net = self.shard_network(net, layers=Block)
        self.optimizer = torch.optim.AdamW(self.net.parameters(), lr=0.01, weight_decay=0.01)

    def train(self) -> None:
        self.net.train()

    def eval(self) -> None:
        self.net.eval()

    def on_training_batch_start(self, state: hlt.TrainingState) -> None:
        if state.global_iteration == self.args.kill_at and self.rank == min(
            1, int(os.environ.get("WORLD_SIZE", "1")) - 1
        ):
            os.kill(os.getpid(), signal.SIGKILL)
        if state.global_iteration == self.args.term_at and self.rank == 0:
            os.kill(os.getpid(), signal.SIGTERM)

    def train_step(self, batch: Any, state: hlt.TrainingState) -> None:
        ids, x, y = batch
        with self.autocast():
            out = self.net(x.to(self.device))
            loss = F.mse_loss(out.float(), y.to(self.device))
        self.forward_dtype = str(out.dtype)
        self.backward(loss)
        self.optimizer_step(self.optimizer)
        self.optimizer.zero_grad()
        self._loss_items["loss"] = loss.detach()
        record = {"iteration": state.global_iteration, "ids": ids.tolist(), "loss": loss.item()}
        _append(self.args.workdir / f"batches{self.rank}.jsonl", json.dumps(record))

    def valid_step(self, batch: Any, step: int) -> None:
        _, x, y = batch
        with torch.no_grad():
            error = F.mse_loss(self.net(x.to(self.device)).float(), y.to(self.device))
        self._val_scores["error"] = self._val_scores.get("error", 0.0) + float(error)

    def on_validation_end(self, validation_cycle: int) -> None:
        self._metrics["error"] = self._val_scores.pop("error", 0.0)

    def on_training_end(self) -> None:
        net = (
            self.net.module
            if isinstance(self.net, nn.parallel.DistributedDataParallel)
            else self.net
        )
        full = {key: _full(value) for key, value in net.state_dict().items()}
        if self.rank == 0:
            torch.save(full, self.args.workdir / "final.pt")
            fsdp = torch.distributed.fsdp.FSDPModule
            result = {
                "world_size": int(os.environ.get("WORLD_SIZE", "1")),
                "sharded": sorted(
                    name or "<root>"
                    for name, module in net.named_modules()
                    if isinstance(module, fsdp)
                ),
                "forward_dtype": self.forward_dtype,
                "forward_weight_dtype": net.blocks[0].weight_dtype,
            }
            (self.args.workdir / "result.json").write_text(json.dumps(result))

    def test_step(self, batch: Any, step: int) -> None:
        ids, x, _ = batch
        with torch.no_grad():
            out = self.net(x.to(self.device))
        record = {"ids": ids.tolist(), "outputs": out.flatten().tolist()}
        _append(self.args.workdir / f"tested{self.rank}.jsonl", json.dumps(record))


class HiddenNetworkModel(ShardedModel):
    """The sharded network kept where the default state does not look (two levels deep)."""

    def setup(self, fast_init: bool = False) -> None:
        super().setup(fast_init)
        self.parts = {"inner": {"net": self.net}}
        del self.net

    def __getattr__(self, name: str) -> Any:
        if name == "net":
            return self.__dict__["parts"]["inner"]["net"]
        raise AttributeError(name)

    def state_dict(self) -> dict[str, Any]:
        return {"net": self.net.state_dict(), "optimizer": self.optimizer.state_dict()}


class ExplicitStateModel(ShardedModel):
    """The same model, with the ``state_dict`` a user writes (as the seeds show)."""

    def state_dict(self) -> dict[str, Any]:
        return {"net": self.net.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any], fast_init: bool = False) -> None:
        self.net.load_state_dict(state_dict["net"])
        self.optimizer.load_state_dict(state_dict["optimizer"])


def _full(value: torch.Tensor) -> torch.Tensor:
    full = getattr(value, "full_tensor", None)
    return (full() if full is not None else value).detach().clone()


def _append(path: pathlib.Path, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def _kill_in_commit(after_saves: int) -> None:
    """Make rank 0 die (SIGKILL) at its N-th save, between the shards and the commit."""
    real_commit = run_checkpoint.commit_sharded
    count = 0

    def dying_commit(contents: dict[str, Any], path: pathlib.Path) -> None:
        nonlocal count
        count += 1
        if count == after_saves:
            os.kill(os.getpid(), signal.SIGKILL)
        real_commit(contents, path)

    run_checkpoint.commit_sharded = dying_commit  # type: ignore[assignment]


def _kill_writing_contents(at_save: int) -> None:
    """Make rank 0 die (SIGKILL) halfway through writing the N-th save's ``helios.pth``.

    helios writes its checkpoint files through a wrapper that records write errors
    (``checkpoint.io._RecordingFile``); Distributed Checkpoint writes its objects into the
    shard files directly. Only a sharded save writes a file in this job.
    """
    real_save = torch.save
    count = 0

    def dying_save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        nonlocal count
        if type(f).__name__ != "_RecordingFile":
            real_save(obj, f, *args, **kwargs)
            return
        count += 1
        if count != at_save:
            real_save(obj, f, *args, **kwargs)
            return
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    torch.save = dying_save


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("workdir", type=pathlib.Path)
    parser.add_argument("--kill-at", type=int, default=None)
    parser.add_argument("--kill-in-commit", type=int, default=None)
    parser.add_argument("--kill-writing-contents", type=int, default=None)
    parser.add_argument("--explicit-state", action="store_true")
    parser.add_argument("--replicate", action="store_true")
    parser.add_argument("--meta-init", action="store_true")
    parser.add_argument("--hidden-network", action="store_true")
    parser.add_argument("--async-save", action="store_true")
    parser.add_argument("--precision", default="32")
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--keep-last", type=int, default=None)
    parser.add_argument("--test", action="store_true")
    parser.add_argument("--term-at", type=int, default=None)
    parser.add_argument("--chkpt-every", type=int, default=1)
    args = parser.parse_args(argv)
    if args.kill_in_commit is not None and os.environ.get("RANK", "0") == "0":
        _kill_in_commit(args.kill_in_commit)
    if args.kill_writing_contents is not None and os.environ.get("RANK", "0") == "0":
        _kill_writing_contents(args.kill_writing_contents)
    model_type = ExplicitStateModel if args.explicit_state else ShardedModel
    model = (HiddenNetworkModel if args.hidden_network else model_type)(args)
    trainer = hlt.Trainer(
        run_name="shard",
        train_unit=hlt.TrainingUnit.ITERATION,
        total_steps=TOTAL_ITERATIONS,
        valid_frequency=4,
        chkpt_frequency=args.chkpt_every,
        chkpt_keep_last=args.keep_last,
        chkpt_async=args.async_save,
        chkpt_root=args.workdir / "chkpt",
        use_cpu=True,
        random_seed=7,
        enable_deterministic=True,
        enable_progress_bar=False,
        precision=args.precision,
        print_summaries=False,
    )
    if not trainer.fit(model, Data()):
        return 1
    if args.test and not trainer.test(model, Data()):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
