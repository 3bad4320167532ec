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

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))  # tests/, for toys

import helios.trainer as hlt
import toys
from helios.core import logging


class Tiny(toys.LinearClassifier):
    """The shared linear classifier; every step writes a long log line and TensorBoard events."""

    def train_step(self, batch: Any, state: hlt.TrainingState) -> None:
        super().train_step(batch, state)
        logging.get_root_logger().info(f"iteration {state.global_iteration} " + "x" * 200)
        writer = logging.get_tensorboard_writer()
        assert writer is not None
        writer.add_scalar("loss", self._loss_items["loss"], state.global_iteration)
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
    data = toys.BlobsData(256, shuffle=False, eval_batch_size=None)
    result = trainer.fit(Tiny(), data)
    print(f"FIT {result}")
    sys.exit(0 if result else 1)


if __name__ == "__main__":
    main()
