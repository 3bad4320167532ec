"""A pyblaze ``fit`` under ``torchrun`` on CPU processes (gloo), sharded or replicated.

For the tests of ``fit(shard=True)`` (test_shard.py)::

    torchrun --nproc_per_node=2 shard_fit_job.py WORKDIR MODE [--chkpt DIR] [--kill-after N]
                                                 [--more]

MODE is ``shard`` (``fit(shard=True)``) or ``ddp`` (``shard=False``). The model is three
residual blocks in a ``ModuleList`` and a head, trained with Adam for ``EPOCHS`` epochs on
fixed data (batches of ``BATCH`` per rank, so the global batch is ``BATCH`` times the number
of processes in both modes).

* ``--chkpt DIR``: checkpoint after every epoch into DIR (and resume from it).
* ``--kill-after N``: rank 1 (rank 0 alone) sends itself SIGKILL in ``after_epoch`` of
  epoch N, before that epoch's checkpoint is written.
* ``--more``: after the fit, one more epoch with ``shard=False``, then one with MODE's
  ``shard``, with the same model and optimizer (whose state each fit takes over).

Each rank writes ``result<rank>.pt``: the weights after the fit (and after ``--more``), the
history, what a callback saw of the parameters and the optimizer state during the run, and
what the user's model and optimizer are after it.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import pyblaze.nn as xnn

WIDTH = 8
EPOCHS = 4
BATCH = 6
NUM_SAMPLES = 48


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(WIDTH, WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.tanh(self.linear(x))


class Net(xnn.Estimator, nn.Module):
    __engine__ = xnn.SupervisedEngine

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block() for _ in range(3))
        self.head = nn.Linear(WIDTH, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def _describe(tensor: Any) -> dict[str, Any]:
    sharded = callable(getattr(tensor, "to_local", None))
    local = tensor.to_local() if sharded else tensor
    return {
        "type": type(tensor).__name__,
        "sharded": sharded,
        "shape": tuple(tensor.shape),
        "local_shape": tuple(local.shape),
    }


class Probe(xnn.TrainingCallback):
    """Records, on every rank, what the run trains: the parameters and the optimizer state."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self.seen: dict[str, Any] = {}

    def before_training(self, model: nn.Module, epochs: int) -> None:
        self.seen["model_is_user_model"] = model is USER_MODEL
        self.seen["engine_model_is_model"] = USER_MODEL.engine.model is model
        self.seen["params"] = {name: _describe(p) for name, p in model.named_parameters()}

    def after_epoch(self, metrics: Any) -> None:
        if "state" not in self.seen:
            first = self.optimizer.param_groups[0]["params"][0]
            self.seen["optimizer_param"] = _describe(first)
            self.seen["state"] = {
                key: _describe(value)
                for key, value in self.optimizer.state[first].items()
                if isinstance(value, torch.Tensor)
            }


class Kill(xnn.TrainingCallback):
    def __init__(self, epoch: int) -> None:
        self.epoch, self.seen = epoch, 0

    def after_epoch(self, metrics: Any) -> None:
        self.seen += 1
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if self.seen == self.epoch and int(os.environ.get("RANK", "0")) == min(1, world_size - 1):
            os.kill(os.getpid(), signal.SIGKILL)


USER_MODEL: Net


def main() -> None:
    global USER_MODEL
    parser = argparse.ArgumentParser()
    parser.add_argument("workdir")
    parser.add_argument("mode", choices=["shard", "ddp"])
    parser.add_argument("--chkpt", default=None)
    parser.add_argument("--kill-after", type=int, default=0)
    parser.add_argument("--more", action="store_true")
    args = parser.parse_args()
    rank = int(os.environ.get("RANK", "0"))

    generator = torch.Generator().manual_seed(7)
    x = torch.randn(NUM_SAMPLES, WIDTH, generator=generator)
    y = x[:, :1] - 0.5 * x[:, 1:2] + 0.1 * torch.randn(NUM_SAMPLES, 1, generator=generator)
    data = TensorDataset(x, y)

    # Each rank starts from other weights: the run must take rank 0's, as DDP does.
    torch.manual_seed(100 + rank)
    model = USER_MODEL = Net()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    params_before = [id(p) for p in model.parameters()]
    torch.manual_seed(0)
    probe = Probe(optimizer)
    callbacks: list[Any] = [probe]
    if args.kill_after:
        callbacks.append(Kill(args.kill_after))
    options = {} if args.chkpt is None else {"chkpt_root": args.chkpt, "chkpt_frequency": 1}
    history = model.fit(
        DataLoader(data, batch_size=BATCH, shuffle=True),
        val_data=DataLoader(data, batch_size=16),
        epochs=EPOCHS,
        optimizer=optimizer,
        loss=nn.MSELoss(),
        callbacks=callbacks,
        trainer_options=options,
        gpu=False,
        shard=args.mode == "shard",
    )
    result: dict[str, Any] = {
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
        "seen": probe.seen,
        "history": [dict(entry) for entry in history._epochs],
        "weights": {k: v.clone() for k, v in model.state_dict().items()},
        "same_parameters": [id(p) for p in model.parameters()] == params_before,
        "optimizer_params_are_model_params": [
            id(p) for group in optimizer.param_groups for p in group["params"]
        ]
        == params_before,
        "parameter_types": sorted({type(p).__name__ for p in model.parameters()}),
        "state_types": sorted(
            {type(v).__name__ for s in optimizer.state.values() for v in s.values()}
        ),
        "engine_model_is_model": model.engine.model is model,
    }
    if args.more:
        for seed, shard in ((1, False), (2, args.mode == "shard")):
            torch.manual_seed(seed)
            model.fit(
                DataLoader(data, batch_size=BATCH, shuffle=True),
                epochs=1,
                optimizer=optimizer,
                loss=nn.MSELoss(),
                gpu=False,
                shard=shard,
            )
            result[f"weights_after_{seed}"] = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save(result, os.path.join(args.workdir, f"result{rank}.pt"))


if __name__ == "__main__":
    sys.exit(main())
