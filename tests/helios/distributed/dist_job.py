"""Small multi-process training jobs for the distributed tests.

Under ``torchrun`` (``python -m torch.distributed.run --nproc_per_node=2 dist_job.py ...``)::

    dist_job.py WORKDIR SCENARIO [--step-sleep S] [--chkpt-root URL] [--save-sleep S]

runs one scenario on gloo (``use_cpu=True``):

* ``reference``: the run the resume tests compare with (ITERATION unit, gradient
  accumulation, checkpoints every iteration, file logging and TensorBoard); then, in the same
  processes, an EPOCH-unit run that early-stops on a metric only rank 1 finds not improving,
  and an ITERATION-unit run that stops when rank 1's ``should_training_stop`` says so;
  finally ``test`` of the first run's newest checkpoint (``tested<r>.jsonl``: the sample ids
  and the summed outputs of every test batch).
* ``resume``: the reference run alone, resumed from the newest checkpoint in WORKDIR (the
  tests SIGKILL it and start it again).
* ``resume`` with ``--chkpt-root URL``: the checkpoints go to an object store (the AWS
  environment points at it), and ``--save-sleep S`` makes each checkpoint upload write half
  its bytes, sleep, then write the rest, so a SIGKILL can land mid-upload.
* ``crash``: the reference run, where rank 1 raises an unlisted exception at iteration 3;
  a rank whose fit failed then calls ``fit`` once more.
* ``sparse``: a longer run (``SPARSE_ITERATIONS`` iterations) that saves only every
  ``SPARSE_CHKPT_EVERY`` iterations and never validates, so the ranks agree on a signal
  only at their periodic agreements (the preemption tests count the batches it takes).

Each rank writes, per fit ``<fit>`` (``main``, ``early``, ``stop``), ``result<r>_<fit>.json``
(what the model, the plug-in and the trainer reported, and where training stopped) and
``final<r>_<fit>.pt`` (the weights at the end), and appends one JSON line per batch to
``batches<r>_<fit>.jsonl`` (a single ``os.write`` on an ``O_APPEND`` file, so a SIGKILL never
leaves half a line). ``saves.jsonl`` gets the rank of every checkpoint file written.

As a plain script (``python dist_job.py WORKDIR spawn``) it runs the spawn machinery of the
Trainer three times on 2 CPU processes (gloo): the same spawn function and per-rank worker
that ``Trainer(gpus=[0, 1]).fit`` uses, which the public API reaches only with two GPUs. The
cases are ``ok``, ``unlisted`` (rank 1 raises a ``KeyError`` at iteration 3) and ``listed``
(the same, with ``KeyError`` in ``train_exceptions``); each prints one line
``SPAWN <case> <json summary>``.

It has no side effects at import time.
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

import helios.data as hld
import helios.model as hlm
import helios.plugins as hlp
import helios.trainer as hlt
import toys
from helios.core import rng

NUM_SAMPLES = 20
BATCH_SIZE = 4
SPARSE_ITERATIONS = 60
SPARSE_CHKPT_EVERY = 25
SAVE_NAME = "dist"
# ITERATION unit, 2 batches per iteration: each rank has 10 samples, 3 batches per epoch
# (4, 4, 2), so iterations straddle epochs and the run covers 6 epochs.
TOTAL_ITERATIONS = 9
ACCUMULATION = 2

_REAL_TORCH_SAVE = torch.save


class DistDataModule(hld.DataModule):
    """Shuffled training batches of 4 and a small validation split.

    Args:
        workdir: ``prepare_data`` appends its process id and ``RANK`` to
            ``prepared.jsonl`` there; ``setup`` raises if that file does not exist yet.
        slow_prepare: make the first ``prepare_data`` take 2.5 s, so that a rank that did
            not wait for it would notice.
    """

    def __init__(self, workdir: pathlib.Path, slow_prepare: bool = False) -> None:
        super().__init__()
        self.workdir = workdir
        self.slow_prepare = slow_prepare

    def prepare_data(self) -> None:
        if self.slow_prepare and not (self.workdir / "prepared.jsonl").exists():
            time.sleep(2.5)
        record = {"pid": os.getpid(), "rank": os.environ.get("RANK")}
        _append_line(self.workdir / "prepared.jsonl", json.dumps(record))

    def setup(self) -> None:
        if not (self.workdir / "prepared.jsonl").exists():
            raise RuntimeError("setup() ran before prepare_data() had finished")
        params = hld.DataLoaderParams(batch_size=BATCH_SIZE, shuffle=True, drop_last=False)
        self._train_dataset = self._create_dataset(toys.IndexedSamples(NUM_SAMPLES), params)
        valid = hld.DataLoaderParams(batch_size=BATCH_SIZE, shuffle=False)
        self._valid_dataset = self._create_dataset(toys.IndexedSamples(8), valid)
        self._test_dataset = self._create_dataset(toys.IndexedSamples(8), valid)


class ProbePlugin(hlp.Plugin):
    """Records what the trainer told the plug-in."""

    def __init__(self) -> None:
        super().__init__("probe")
        self.seen: dict[str, Any] = {}

    def configure_trainer(self, trainer: hlt.Trainer) -> None:
        self._register_in_trainer(trainer)

    def setup(self) -> None:
        self.seen = _describe(self)


def _describe(obj: hlm.Model | hlp.Plugin) -> dict[str, Any]:
    return {
        "is_distributed": obj.is_distributed,
        "rank": obj.rank,
        "device": str(obj.device),
        "map_loc": obj.map_loc,
    }


class DistModel(hlm.Model):
    """An MLP with dropout, wrapped in DDP when distributed.

    Every step draws from python, numpy and torch; rank ``r`` draws ``r + 1`` extra torch
    numbers, so the ranks' random streams differ and a rank resumed with another rank's RNG
    state would train differently.

    Args:
        workdir: where records and results go.
        crash_at: on rank 1, raise at this global iteration (after writing the time,
            ``time.time()``, to ``failed_<tag>``: the tests time the end of the job from it).
        crash_type: the exception type raised.
        stop_at: on rank 1, ``should_training_stop`` is true from this global iteration on.
        step_sleep: seconds to sleep inside each step.
        tag: name of the fit in the output files.
    """

    def __init__(
        self,
        workdir: pathlib.Path,
        crash_at: int | None = None,
        crash_type: type[Exception] = RuntimeError,
        stop_at: int | None = None,
        step_sleep: float = 0.0,
        tag: str = "main",
    ) -> None:
        super().__init__(SAVE_NAME)
        self.workdir = workdir
        self.crash_at = crash_at
        self.crash_type = crash_type
        self.stop_at = stop_at
        self.step_sleep = step_sleep
        self.tag = tag
        self.global_iteration = 0
        self.result: dict[str, Any] = {}

    def setup(self, fast_init: bool = False) -> None:
        torch.manual_seed(0)
        net = toys.regression_mlp()
        self.net: nn.Module = net.to(self.device)
        if self.is_distributed:
            self.net = nn.parallel.DistributedDataParallel(net)
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=0.05, momentum=0.9)
        self.result = {"model": _describe(self), "fit": self.tag}

    def _plain_net(self) -> nn.Module:
        return self.net.module if self.is_distributed else self.net  # type: ignore[return-value]

    def state_dict(self) -> dict[str, Any]:
        return {"net": self._plain_net().state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any], fast_init: bool = False) -> None:
        self._plain_net().load_state_dict(state_dict["net"])
        self.optimizer.load_state_dict(state_dict["optimizer"])

    def train(self) -> None:
        self.net.train()

    def eval(self) -> None:
        self.net.eval()

    def on_training_start(self) -> None:
        trainer = self.trainer
        self.result["trainer"] = {
            "rank": trainer.rank,
            "local_rank": trainer.local_rank,
            "queue_is_none": trainer.queue is None,
            "is_distributed": trainer.is_distributed,
        }
        self.result["plugin"] = dict(trainer.plugins["probe"].seen)
        (self.workdir / f"started_{self.tag}_{os.getpid()}").touch()

    def train_step(self, batch: Any, state: hlt.TrainingState) -> None:
        ids, x, y = batch
        self.global_iteration = state.global_iteration
        torch.rand(self.rank + 1)
        py_draw = random.random()
        np_draw = float(np.random.rand()) + float(rng.get_default_numpy_rng().generator.random())
        target = y + 0.1 * np_draw + 0.1 * torch.randn_like(y)
        output = self.net(x) * (1.0 + 0.1 * py_draw)
        loss = nn.functional.mse_loss(output, target)
        (loss / ACCUMULATION).backward()
        if self.crash_at == state.global_iteration and self.rank == 1:
            (self.workdir / f"failed_{self.tag}").write_text(repr(time.time()))
            raise self.crash_type(f"planted failure on rank 1 at iteration {self.crash_at}")
        if self.step_sleep:
            time.sleep(self.step_sleep)
        if state.global_iteration % self.trainer.accumulation_steps == 0:
            self.optimizer.step()
            self.optimizer.zero_grad()
        self._loss_items["loss"] = loss.detach()
        self._record = {
            "pid": os.getpid(),
            "gi": state.global_iteration,
            "epoch": state.global_epoch,
            "ids": ids.tolist(),
            "local_loss": float(loss.item()),
            "py_draw": py_draw,
        }

    def on_training_batch_end(self, state: hlt.TrainingState, should_log: bool = False) -> None:
        super().on_training_batch_end(state, should_log)
        record = dict(self._record, mean_loss=float(self._loss_items["loss"].item()))
        _append_line(self.workdir / f"batches{self.rank}_{self.tag}.jsonl", json.dumps(record))

    def test_step(self, batch: Any, step: int) -> None:
        ids, x, _ = batch
        record = {"ids": ids.tolist(), "output": self.net(x).sum().item()}
        _append_line(self.workdir / f"tested{self.rank}.jsonl", json.dumps(record))

    def valid_step(self, batch: Any, step: int) -> None:
        self.net(batch[1])

    def have_metrics_improved(self) -> bool:
        # Rank 0 always improves, rank 1 never does: early stopping must still stop both.
        return self.rank == 0

    def should_training_stop(self) -> bool:
        return self.stop_at is not None and self.rank == 1 and self.global_iteration >= self.stop_at

    def on_training_end(self) -> None:
        self.result["stopped_at"] = self.global_iteration
        suffix = f"{self.rank}_{self.tag}"
        _REAL_TORCH_SAVE(self._plain_net().state_dict(), self.workdir / f"final{suffix}.pt")
        (self.workdir / f"result{suffix}.json").write_text(json.dumps(self.result))
        # Seed 003's way of sending results back to the process that called fit.
        if self.is_distributed and self.rank == 0 and self.trainer.queue is not None:
            self.trainer.queue.put({"rank": self.rank, "stopped_at": self.global_iteration})


def _append_line(path: pathlib.Path, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def _record_saves(workdir: pathlib.Path, save_sleep: float = 0.0) -> None:
    """Make every ``torch.save`` into a file object record the rank that wrote it (and,
    with ``save_sleep``, write half the bytes, sleep, then the rest)."""

    def recording_save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        # A checkpoint file (written through a file object), not the buffer of a collective.
        if not hasattr(f, "write") or isinstance(f, io.BytesIO):
            _REAL_TORCH_SAVE(obj, f, *args, **kwargs)
            return
        _append_line(workdir / "saves.jsonl", json.dumps({"rank": int(os.environ["RANK"])}))
        if not save_sleep:
            _REAL_TORCH_SAVE(obj, f, *args, **kwargs)
            return
        buffer = io.BytesIO()
        _REAL_TORCH_SAVE(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        time.sleep(save_sleep)
        f.write(data[len(data) // 2 :])

    torch.save = recording_save


def make_trainer(workdir: pathlib.Path, **kwargs: Any) -> hlt.Trainer:
    """Build the Trainer of the reference run; ``kwargs`` override its arguments."""
    arguments: dict[str, Any] = {
        "run_name": "dist",
        "train_unit": "iteration",
        "total_steps": TOTAL_ITERATIONS,
        "accumulation_steps": ACCUMULATION,
        "chkpt_frequency": 1,
        "chkpt_root": workdir / "chkpt",
        "use_cpu": True,
        "enable_deterministic": True,
        "print_banner": False,
    }
    arguments.update(kwargs)
    return hlt.Trainer(**arguments)


def _fit(trainer: hlt.Trainer, model: DistModel, slow_prepare: bool = False) -> bool:
    plugin = ProbePlugin()
    plugin.configure_trainer(trainer)
    return trainer.fit(model, DistDataModule(model.workdir, slow_prepare))


def run_torchrun(
    workdir: pathlib.Path,
    scenario: str,
    step_sleep: float,
    chkpt_root: str | None = None,
    save_sleep: float = 0.0,
    own_group: bool = False,
) -> int:
    """Run a scenario in one torchrun worker; return the exit code.

    ``own_group``: the script initialises the process group itself before the Trainer runs.
    """
    _record_saves(workdir, save_sleep)
    if own_group:
        torch.distributed.init_process_group("gloo")
    if scenario == "reference":
        trainer = make_trainer(
            workdir,
            enable_file_logging=True,
            log_path=workdir / "logs",
            enable_tensorboard=True,
            run_path=workdir / "runs",
            print_frequency=1,
        )
    elif chkpt_root is not None:
        trainer = make_trainer(workdir, chkpt_root=chkpt_root)
    elif scenario == "sparse":
        trainer = make_trainer(
            workdir, total_steps=SPARSE_ITERATIONS, chkpt_frequency=SPARSE_CHKPT_EVERY
        )
    else:
        trainer = make_trainer(workdir)
    crash_at = 3 if scenario == "crash" else None
    model = DistModel(workdir, crash_at=crash_at, step_sleep=step_sleep)
    if not _fit(trainer, model, slow_prepare=scenario == "reference"):
        if scenario == "crash":
            # The group was torn down: another fit must fail at once instead of hanging.
            again = _fit(make_trainer(workdir), DistModel(workdir, tag="again"))
            print(f"second fit on rank {os.environ['RANK']} returned {again}", flush=True)
        return 1
    if scenario != "reference":
        return 0

    # Two more runs in the same processes, reusing the process group.
    early_trainer = make_trainer(
        workdir,
        train_unit="epoch",
        total_steps=10,
        accumulation_steps=1,
        valid_frequency=1,
        early_stop_cycles=2,
        chkpt_frequency=None,
        chkpt_root=None,
    )
    if not _fit(early_trainer, DistModel(workdir, tag="early")):
        return 1
    stop_trainer = make_trainer(workdir, total_steps=20, chkpt_frequency=None, chkpt_root=None)
    if not _fit(stop_trainer, DistModel(workdir, stop_at=5, tag="stop")):
        return 1
    # And a test of the main run's newest checkpoint.
    tested = trainer.test(DistModel(workdir, tag="test"), DistDataModule(workdir))
    return 0 if tested else 1


def run_spawned(workdir: pathlib.Path, case: str) -> str:
    """Run the Trainer's spawn machinery on 2 CPU processes; return a one-line summary."""
    import dataclasses

    folder = workdir / case
    folder.mkdir()
    trainer = make_trainer(
        folder,
        chkpt_root=None,
        chkpt_frequency=None,
        enable_deterministic=False,  # saves seconds of start-up in every rank
        enable_file_logging=True,
        log_path=folder / "logs",
    )
    # What Trainer(gpus=[0, 1]) configures (one spawned rank per id); the CPU ranks use gloo.
    trainer._config = dataclasses.replace(trainer._config, is_distributed=True, gpu_ids=(0, 1))
    plugin = ProbePlugin()
    plugin.configure_trainer(trainer)
    if case == "listed":
        trainer.train_exceptions = [KeyError]
    crash_at = None if case == "ok" else 3
    model = DistModel(folder, crash_at=crash_at, crash_type=KeyError, tag="spawn")
    datamodule = DistDataModule(folder)
    try:
        ok = trainer.fit(model, datamodule)
    except KeyError as error:
        notes = getattr(error, "__notes__", [])
        summary = {"raised": type(error).__name__, "message": str(error), "notes": notes}
    else:
        queue = trainer.queue
        result = queue.get(timeout=10) if ok and queue is not None else None
        summary = {"returned": ok, "queue": result}
    # From the failure on rank 1 to the caller's return (not from the start: starting the
    # ranks takes long on a loaded machine, and is not what the tests bound).
    failed = folder / "failed_spawn"
    if failed.exists():
        summary["seconds_after_failure"] = time.time() - float(failed.read_text())
    return json.dumps(summary)


def main(argv: list[str]) -> int:
    """Parse the arguments and run the scenario; return the exit code."""
    parser = argparse.ArgumentParser()
    parser.add_argument("workdir", type=pathlib.Path)
    parser.add_argument("scenario", choices=["reference", "resume", "crash", "sparse", "spawn"])
    parser.add_argument("--step-sleep", type=float, default=0.0)
    parser.add_argument("--chkpt-root", default=None, help="a store URL (s3://...)")
    parser.add_argument("--save-sleep", type=float, default=0.0)
    parser.add_argument("--own-group", action="store_true")
    args = parser.parse_args(argv)
    if args.scenario == "spawn":
        for case in ("ok", "unlisted", "listed"):
            print(f"SPAWN {case} {run_spawned(args.workdir, case)}", flush=True)
        return 0
    return run_torchrun(
        args.workdir,
        args.scenario,
        args.step_sleep,
        args.chkpt_root,
        args.save_sleep,
        args.own_group,
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
