"""A small training job used by the checkpoint and exact-resume tests.

Run as a script it trains until done, then writes the final weights to
``<workdir>/final.pt``::

    python resume_job.py WORKDIR UNIT TOTAL_STEPS ACCUMULATION
        [--step-sleep S] [--save-sleep S] [--hang-in-save N] [--go FILE]
        [--precision NAME] [--trainer JSON]

Every batch appends one JSON line to ``<workdir>/batches.jsonl`` (a single ``os.write`` on an
``O_APPEND`` file, so a SIGKILL never leaves half a line): the process id, the global
iteration, the epoch, the sample ids of the batch and the random draws and loss of the step.
``<workdir>/started_<pid>`` appears when training starts (after any checkpoint was loaded).

``--step-sleep`` sleeps inside each step (after the backward pass, before the optimizer
step), so a kill lands mid-step. ``--save-sleep`` replaces ``torch.save`` with a version that
writes the first half of the checkpoint, sleeps, then writes the rest, so a kill can land
mid-save. ``--hang-in-save N`` makes the N-th save of this process write half the file,
create ``<workdir>/in_save_<pid>`` and hang, so a test can kill it mid-save on purpose.

``--valid-sleep`` sleeps inside each validation step, and ``--chkpt-frequency`` replaces the
default of one checkpoint per unit. ``--loggers csv,mlflow`` logs every iteration to a CSV
file and an MLflow SQLite store in the workdir.

``--tensorboard`` writes a TensorBoard run into ``<workdir>/runs``: the loss of every batch
(``train/loss`` at the global iteration, flushed at once, so a kill leaves the points after
the last checkpoint on disk) and ``valid/cycle`` at each validation cycle.

``--trainer JSON`` adds Trainer arguments (a JSON object), e.g. retention or asynchronous
saves. After each validation cycle the model's ``metrics["score"]`` is ``SCORES[cycle]``, a
fixed sequence for the best-checkpoint tests.

``--go FILE`` waits (after the imports, before anything else) until ``FILE`` exists, so a
test can start the next job while the current one runs and hide the start-up time.

``--precision`` trains at that precision (the step uses the Model's precision helpers). At
``"fp16-mixed"`` the scaler grows its scale after every 2 good steps, so the scale goes up
and down (from 65536, float16 gradients overflow and steps are skipped), and the records
hold the scale of each batch.

The test modules import this file for its model and data module, so it has no side effects
at import time.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pathlib
import random
import sys
import time
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))  # tests/, for toys

import numpy as np
import torch
from torch import nn

import helios.core as hlc
import helios.data as hld
import helios.model as hlm
import helios.trainer as hlt
import toys
from helios.core import logging, rng

NUM_SAMPLES = 10
BATCH_SIZE = 4
SAVE_NAME = "resume"

_REAL_TORCH_SAVE = torch.save
# metrics["score"] after validation cycle c is SCORES[c % len(SCORES)].
SCORES = (0.5, 0.9, 0.2, 0.7, 0.95, 0.1, 0.3, 0.6, 0.4)


class CountingDataset(toys.IndexedSamples):
    """The shared samples ``(id, x, y)``; counts every ``__getitem__`` call."""

    def __init__(self, size: int = NUM_SAMPLES, seed: int = 1234) -> None:
        super().__init__(size, seed)
        self.accessed: list[int] = []

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        self.accessed.append(index)
        return super().__getitem__(index)


class ResumeDataModule(hld.DataModule):
    """Shuffled batches of 4 from 10 samples (3 batches per epoch, the last one of 2), and
    a validation split of 4 samples in batches of 2."""

    def setup(self) -> None:
        params = hld.DataLoaderParams(batch_size=BATCH_SIZE, shuffle=True, drop_last=False)
        self._train_dataset = self._create_dataset(CountingDataset(), params)
        valid = CountingDataset(size=4, seed=99)
        self._valid_dataset = self._create_dataset(valid, hld.DataLoaderParams(batch_size=2))


class ResumeModel(hlm.Model):
    """An MLP with dropout whose steps also draw from python, numpy and torch RNGs.

    Args:
        accumulation: batches per optimizer step.
        record_path: JSON-lines file that receives one record per batch (``None``: the
            records are only kept in :py:attr:`records`).
        step_sleep: seconds to sleep inside each step.
        crash_at: raise ``RuntimeError`` in the middle of the step of this global iteration.
        workdir: where the ``started_<pid>`` marker is written (``None``: no marker).
        valid_sleep: seconds to sleep inside each validation step (each one appends a line
            to ``<workdir>/valid.jsonl`` when a workdir is given).
        log_scalars: log ``train/loss`` (flushed at every batch) and ``valid/cycle`` to
            TensorBoard.
    """

    def __init__(
        self,
        accumulation: int = 1,
        record_path: pathlib.Path | None = None,
        step_sleep: float = 0.0,
        crash_at: int | None = None,
        workdir: pathlib.Path | None = None,
        valid_sleep: float = 0.0,
        log_scalars: bool = False,
    ) -> None:
        super().__init__(SAVE_NAME)
        self.log_scalars = log_scalars
        self.valid_sleep = valid_sleep
        self.accumulation = accumulation
        self.record_path = record_path
        self.step_sleep = step_sleep
        self.crash_at = crash_at
        self.workdir = workdir
        self.records: list[dict[str, Any]] = []
        self.extra_state: dict[str, Any] = {}

    def setup(self, fast_init: bool = False) -> None:
        self.net = toys.regression_mlp().to(self.device)
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=0.05, momentum=0.9)
        scaler = self.trainer.precision.scaler
        if scaler is not None:
            scaler.set_growth_interval(2)

    def state_dict(self) -> dict[str, Any]:
        return {
            "net": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            **self.extra_state,
        }

    def load_state_dict(self, state_dict: dict[str, Any], fast_init: bool = False) -> None:
        self.net.load_state_dict(state_dict["net"])
        self.optimizer.load_state_dict(state_dict["optimizer"])

    def train(self) -> None:
        self.net.train()

    def eval(self) -> None:
        self.net.eval()

    def on_training_start(self) -> None:
        # Draws made before the resume point must not shift the restored streams.
        _draw_everything()
        if self.workdir is not None:
            (self.workdir / f"started_{os.getpid()}").touch()

    def on_training_epoch_start(self, current_epoch: int) -> None:
        _draw_everything()

    def valid_step(self, batch: Any, step: int) -> None:
        # Validation draws shift the streams that the following training steps see.
        _draw_everything()
        self.net(batch[1].to(self.device))
        if self.workdir is not None:
            _append_line(self.workdir / "valid.jsonl", json.dumps({"step": step}))
        if self.valid_sleep:
            time.sleep(self.valid_sleep)

    def on_validation_end(self, validation_cycle: int) -> None:
        self.metrics["score"] = SCORES[validation_cycle % len(SCORES)]
        super().on_validation_end(validation_cycle)
        if self.log_scalars:
            writer = hlc.get_from_optional(logging.get_tensorboard_writer())
            writer.add_scalar("valid/cycle", float(validation_cycle), validation_cycle)

    def train_step(self, batch: Any, state: hlt.TrainingState) -> None:
        ids, x, y = batch
        x, y = x.to(self.device), y.to(self.device)
        py_draw = random.random()
        np_legacy_draw = float(np.random.rand())
        np_default_draw = float(rng.get_default_numpy_rng().generator.random())
        noise = 0.1 * torch.randn_like(y)
        target = y + 0.1 * (np_legacy_draw + np_default_draw) + noise
        with self.autocast():
            output = self.net(x) * (1.0 + 0.1 * py_draw)
            loss = nn.functional.mse_loss(output, target)
        scaler = self.trainer.precision.scaler
        scale = None if scaler is None else scaler.get_scale()
        self.backward(loss / self.accumulation)
        record = {
            "pid": os.getpid(),
            "gi": state.global_iteration,
            "epoch": state.global_epoch,
            "ids": ids.tolist(),
            "draws": [py_draw, np_legacy_draw, np_default_draw, float(loss.item())],
        }
        if scale is not None:
            record["scale"] = scale
        self.records.append(record)
        if self.log_scalars:
            writer = hlc.get_from_optional(logging.get_tensorboard_writer())
            writer.add_scalar("train/loss", loss.item(), state.global_iteration)
            writer.flush()
        if self.record_path is not None:
            _append_line(self.record_path, json.dumps(record))
        if self.crash_at == state.global_iteration:
            raise RuntimeError(f"crash requested at global iteration {self.crash_at}")
        if self.step_sleep:
            time.sleep(self.step_sleep)
        if state.global_iteration % self.accumulation == 0:
            self.optimizer_step(self.optimizer)
            self.optimizer.zero_grad()
        self._loss_items["loss"] = loss.detach()


def _draw_everything() -> None:
    random.random()
    np.random.rand()
    rng.get_default_numpy_rng().generator.random()
    torch.rand(1)
    if torch.cuda.is_available():
        torch.rand(1, device="cuda")


def _append_line(path: pathlib.Path, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def make_trainer(
    workdir: pathlib.Path, unit: str, total_steps: int, accumulation: int, **kwargs: Any
) -> hlt.Trainer:
    """Build the Trainer of the job; ``kwargs`` override or add Trainer arguments."""
    arguments: dict[str, Any] = {
        "run_name": "resume",
        "train_unit": unit,
        "total_steps": total_steps,
        "accumulation_steps": accumulation,
        "chkpt_frequency": 1,
        "valid_frequency": 2,
        "chkpt_root": workdir / "chkpt",
        "use_cpu": True,
        "enable_deterministic": True,
        "print_banner": False,
    }
    arguments.update(kwargs)
    return hlt.Trainer(**arguments)


def make_loggers(workdir: pathlib.Path, names: str) -> list[Any]:
    """Build the experiment loggers named in ``names`` (``csv``, ``mlflow``), in workdir."""
    from helios.loggers import CSVLogger, MLflowLogger

    loggers: list[Any] = []
    for name in filter(None, names.split(",")):
        if name == "csv":
            loggers.append(CSVLogger(workdir / "metrics.csv"))
        else:
            loggers.append(MLflowLogger(save_dir=workdir / "mlflow", run_name="resume"))
    return loggers


def checkpoint_dir(workdir: pathlib.Path) -> pathlib.Path:
    """Return the folder that holds the job's checkpoints."""
    return workdir / "chkpt" / SAVE_NAME


def install_slow_save(save_sleep: float, hang_at: int | None, workdir: pathlib.Path) -> None:
    """Replace ``torch.save`` with a version that writes file objects in two halves."""
    saves = 0

    def slow_save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        nonlocal saves
        if not hasattr(f, "write"):
            _REAL_TORCH_SAVE(obj, f, *args, **kwargs)
            return
        buffer = io.BytesIO()
        _REAL_TORCH_SAVE(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        half = len(data) // 2
        f.write(data[:half])
        f.flush()
        saves += 1
        if saves == hang_at:
            (workdir / f"in_save_{os.getpid()}").touch()
            time.sleep(120)
        time.sleep(save_sleep)
        f.write(data[half:])

    torch.save = slow_save


def main(argv: list[str]) -> int:
    """Run the job; return the exit code (0 when training completed)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("workdir", type=pathlib.Path)
    parser.add_argument("unit", choices=["epoch", "iteration"])
    parser.add_argument("total_steps", type=int)
    parser.add_argument("accumulation", type=int)
    parser.add_argument("--step-sleep", type=float, default=0.0)
    parser.add_argument("--save-sleep", type=float, default=0.0)
    parser.add_argument("--hang-in-save", type=int, default=None)
    parser.add_argument("--go", type=pathlib.Path, default=None)
    parser.add_argument("--valid-sleep", type=float, default=0.0)
    parser.add_argument("--chkpt-frequency", type=int, default=1)
    parser.add_argument("--loggers", default="", help="comma list of csv, mlflow")
    parser.add_argument("--precision", default="32")
    parser.add_argument("--tensorboard", action="store_true")
    parser.add_argument("--trainer", type=json.loads, default={})
    args = parser.parse_args(argv)

    if args.go is not None:
        # torch.use_deterministic_algorithms imports torch._inductor, which takes seconds:
        # do it while waiting, so that the job trains as soon as it is told to go.
        import torch._inductor.config  # noqa: F401

        deadline = time.monotonic() + 300
        while not args.go.exists():
            if time.monotonic() > deadline:
                return 2
            time.sleep(0.002)

    if args.save_sleep or args.hang_in_save is not None:
        install_slow_save(args.save_sleep, args.hang_in_save, args.workdir)
    model = ResumeModel(
        accumulation=args.accumulation,
        record_path=args.workdir / "batches.jsonl",
        step_sleep=args.step_sleep,
        workdir=args.workdir,
        valid_sleep=args.valid_sleep,
        log_scalars=args.tensorboard,
    )
    tensorboard = {"enable_tensorboard": True, "run_path": args.workdir / "runs"}
    options: dict[str, Any] = {
        "chkpt_frequency": args.chkpt_frequency,
        "loggers": make_loggers(args.workdir, args.loggers),
        "print_frequency": 1 if args.loggers else None,
        "precision": args.precision,
        **(tensorboard if args.tensorboard else {}),
        **args.trainer,
    }
    trainer = make_trainer(args.workdir, args.unit, args.total_steps, args.accumulation, **options)
    if not trainer.fit(model, ResumeDataModule()):
        return 1
    _REAL_TORCH_SAVE(model.net.state_dict(), args.workdir / "final.pt")
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip the interpreter's slow teardown of torch's compiler modules (over a second).
    os._exit(code)
