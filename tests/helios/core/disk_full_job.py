"""A complete training run whose log file cannot be written past a size (a full disk).

``python disk_full_job.py ROOT FSIZE``: limits every file this process writes to ``FSIZE``
bytes (RLIMIT_FSIZE, with SIGXFSZ ignored, so writes past it fail with EFBIG like writes to
a full disk), then trains a tiny model for 4 epochs with file logging, TensorBoard and a
checkpoint per epoch; the model logs a long line and TensorBoard events per iteration, so
the log file and the event file reach the limit early while each checkpoint stays below
it. Prints ``FIT <result>`` and exits 0 if ``fit`` returned True.
"""

from __future__ import annotations

import pathlib
import resource
import signal
import sys
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

import helios.data as hld
import helios.model as hlm
import helios.trainer as hlt
from helios.core import logging


class Data(hld.DataModule):
    def setup(self) -> None:
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(256, 3, generator=generator)
        dataset = TensorDataset(x, (x.sum(dim=1) > 0).long())
        self._train_dataset = self._create_dataset(dataset, hld.DataLoaderParams(batch_size=4))


class Tiny(hlm.Model):
    def __init__(self) -> None:
        super().__init__("tiny")

    def setup(self, fast_init: bool = False) -> None:
        self.net = nn.Linear(3, 2)
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=0.1)

    def state_dict(self) -> dict[str, Any]:
        return {"net": self.net.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any], fast_init: bool = False) -> None:
        self.net.load_state_dict(state_dict["net"])

    def train_step(self, batch: Any, state: hlt.TrainingState) -> None:
        x, y = batch
        self.optimizer.zero_grad()
        loss = nn.functional.cross_entropy(self.net(x), y)
        loss.backward()
        self.optimizer.step()
        logging.get_root_logger().info(f"iteration {state.global_iteration} " + "x" * 200)
        writer = logging.get_tensorboard_writer()
        assert writer is not None
        writer.add_scalar("loss", loss, state.global_iteration)
        writer.add_text("note", "y" * 100, state.global_iteration)


def main() -> None:
    root = pathlib.Path(sys.argv[1])
    limit = int(sys.argv[2])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    trainer = hlt.Trainer(
        run_name="diskfull",
        total_steps=4,
        chkpt_frequency=1,
        enable_file_logging=True,
        enable_tensorboard=True,
        enable_progress_bar=False,
        use_cpu=True,
        chkpt_root=root / "chkpt",
        log_path=root / "logs",
        run_path=root / "runs",
        print_banner=False,
    )
    result = trainer.fit(Tiny(), Data())
    print(f"FIT {result}")
    sys.exit(0 if result else 1)


if __name__ == "__main__":
    main()
