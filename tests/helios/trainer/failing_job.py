"""The README's program with a hook that fails: ``python failing_job.py ROOT [reraise]``.

``train_step`` raises ``ValueError`` at the third batch, through a helper method. The script
ends with the README's ``sys.exit(0 if trainer.fit(...) else 1)``; with ``reraise`` it first
sets ``trainer.train_exceptions = [ValueError]`` so that ``fit`` re-raises.
"""

from __future__ import annotations

import pathlib
import sys
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

import helios.data as hld
import helios.model as hlm
import helios.trainer as hlt


class MyData(hld.DataModule):
    def setup(self) -> None:
        x = torch.randn(32, 3, generator=torch.Generator().manual_seed(0))
        dataset = TensorDataset(x, (x.sum(dim=1) > 0).long())
        self._train_dataset = self._create_dataset(dataset, hld.DataLoaderParams(batch_size=4))


class MyModel(hlm.Model):
    def setup(self, fast_init: bool = False) -> None:
        self._net = nn.Linear(3, 2)
        self._optimizer = torch.optim.SGD(self._net.parameters(), lr=0.01)

    def _check(self, state: hlt.TrainingState) -> None:
        if state.global_iteration == 3:
            raise ValueError("the targets do not match the predictions\nsecond line")

    def train_step(self, batch: Any, state: hlt.TrainingState) -> None:
        self._check(state)
        x, y = batch
        self._optimizer.zero_grad()
        loss = nn.functional.cross_entropy(self._net(x), y)
        loss.backward()
        self._optimizer.step()
        self._loss_items["loss"] = loss

    def state_dict(self) -> dict[str, Any]:
        return {"net": self._net.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any], fast_init: bool = False) -> None:
        self._net.load_state_dict(state_dict["net"])


if __name__ == "__main__":
    root = pathlib.Path(sys.argv[1])
    trainer = hlt.Trainer(
        total_steps=2,
        chkpt_frequency=1,
        chkpt_root=root / "chkpt",
        enable_file_logging=True,
        log_path=root / "logs",
        enable_progress_bar=False,
        print_banner=False,
        use_cpu=True,
    )
    if sys.argv[2:] == ["reraise"]:
        trainer.train_exceptions = [ValueError]
    sys.exit(0 if trainer.fit(MyModel("my-model"), MyData()) else 1)
