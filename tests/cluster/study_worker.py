"""A worker of a shared Optuna study whose trials train on 2 processes, for the cluster tests.

Run under ``torchrun`` (2 processes, gloo)::

    study_worker.py STUDY_PY URL CHKPT_ROOT

``STUDY_PY`` is the study module of ``docs/howto/cluster.md`` (its ``open_study``). Rank 0
opens the study through it (heartbeats every second, dead after 3 s) and runs
``study.optimize`` one trial at a time; for each trial it sends the trial's id to rank 1,
and both train it with the Trainer and the OptunaPlugin (checkpoints under
``CHKPT_ROOT``, named after the trial's identity so that a re-run resumes them). The
trials are the ones queued in the study beforehand; after a trial, a worker takes the next
queued one, waits while other workers' trials run (failing those whose heartbeat stopped,
which queues them again), and stops when none is left. Each epoch sleeps
``$STUDY_EPOCH_SECONDS``; rank 0 writes ``<CHKPT_ROOT>/running-<hostname>`` with the number
of its current trial.
"""

from __future__ import annotations

import gc
import importlib.util
import os
import pathlib
import socket
import sys
import time
from typing import Any

import optuna
import torch
from optuna.trial import TrialState
from torch import nn
from torch.utils.data import TensorDataset

import helios.data as hld
import helios.model as hlm
import helios.trainer as hlt
from helios.core import distributed as dist
from helios.plugins import optuna as hlpo

EPOCHS = 4
EPOCH_SECONDS = float(os.environ.get("STUDY_EPOCH_SECONDS", "0"))


class Data(hld.DataModule):
    def setup(self) -> None:
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(32, 4, generator=generator)
        y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
        params = hld.DataLoaderParams(batch_size=4, shuffle=True)
        self._train_dataset = self._create_dataset(TensorDataset(x, y), params)
        self._valid_dataset = self._create_dataset(
            TensorDataset(x, y), hld.DataLoaderParams(batch_size=8)
        )


class TunedModel(hlm.Model):
    def __init__(self) -> None:
        super().__init__("tuned")

    def setup(self, fast_init: bool = False) -> None:
        plugin = self.trainer.plugins[hlpo.OptunaPlugin.plugin_id]
        assert isinstance(plugin, hlpo.OptunaPlugin)
        self.plugin = plugin
        lr = plugin.suggest("float", "lr", low=1e-3, high=1e-1, log=True)
        torch.manual_seed(0)
        self.net = nn.parallel.DistributedDataParallel(nn.Linear(4, 1))
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=lr)

    def state_dict(self) -> dict[str, Any]:
        return {"net": self.net.module.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any], fast_init: bool = False) -> None:
        self.net.module.load_state_dict(state_dict["net"])
        self.optimizer.load_state_dict(state_dict["optimizer"])

    def on_training_epoch_start(self, current_epoch: int) -> None:
        time.sleep(EPOCH_SECONDS)

    def train_step(self, batch: Any, state: hlt.TrainingState) -> None:
        x, y = batch
        self.optimizer.zero_grad()
        loss = nn.functional.mse_loss(self.net(x), y)
        loss.backward()
        self.optimizer.step()
        self._loss_items["loss"] = loss.detach()

    def on_validation_start(self, validation_cycle: int) -> None:
        super().on_validation_start(validation_cycle)
        self._val_scores["sum"] = torch.zeros(())

    def valid_step(self, batch: Any, step: int) -> None:
        x, y = batch
        with torch.no_grad():
            self._val_scores["sum"] += nn.functional.mse_loss(self.net(x), y, reduction="sum")

    def on_validation_end(self, validation_cycle: int) -> None:
        self.metrics["loss"] = float(dist.all_reduce_mean(self._val_scores["sum"].clone()))
        self.plugin.report_metrics(validation_cycle)
        super().on_validation_end(validation_cycle)


def train(trial: optuna.Trial, chkpt_root: pathlib.Path) -> float:
    model = TunedModel()
    trainer = hlt.Trainer(
        run_name="tuned",
        train_unit="epoch",
        total_steps=EPOCHS,
        valid_frequency=1,
        chkpt_frequency=1,
        chkpt_root=chkpt_root,
        use_cpu=True,
        enable_deterministic=True,
        enable_progress_bar=False,
        print_banner=False,
        print_summaries=False,
    )
    plugin = hlpo.OptunaPlugin(trial, "loss")
    plugin.configure_trainer(trainer)
    plugin.configure_model(model)
    if not trainer.fit(model, Data()):
        raise RuntimeError("training failed")
    value: float = model.metrics["loss"]
    return value


def run_queued_trials(study: optuna.Study, objective: Any) -> None:
    """Run the queued trials one by one; wait while others run; stop when none is left."""
    while True:
        states = [t.state for t in study.get_trials(deepcopy=False)]
        if TrialState.WAITING in states:
            study.optimize(objective, n_trials=1)
        elif TrialState.RUNNING in states:
            # A trial of another worker: once its heartbeat is stale it is failed and queued
            # again (by resume_study's callback); else it finishes.
            optuna.storages.fail_stale_trials(study)
            time.sleep(0.3)
        else:
            return


def release_group() -> None:
    """Destroy the group this script made, once the trials' models (which hold it) are gone.

    A gloo group still held by a DDP model when the interpreter exits can abort the process
    ("terminate called without an active exception"); the models sit in reference cycles
    with their trainers until a collection.
    """
    gc.collect()
    dist.shutdown_dist()


def main(argv: list[str]) -> None:
    study_py, url, chkpt_root = pathlib.Path(argv[0]), argv[1], pathlib.Path(argv[2])
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(1)
    dist.init_dist("gloo")
    if dist.get_global_rank() != 0:
        study = optuna.load_study(study_name="digits", storage=url)
        while (trial_id := dist.broadcast_object(None)) is not None:
            train(optuna.Trial(study, trial_id), chkpt_root)
        release_group()
        return

    spec = importlib.util.spec_from_file_location("study", study_py)
    assert spec is not None and spec.loader is not None
    documented = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(documented)
    study = documented.open_study(url, heartbeat_interval=1, grace_period=3)
    chkpt_root.mkdir(parents=True, exist_ok=True)
    marker = chkpt_root / f"running-{socket.gethostname()}"

    def objective(trial: optuna.Trial) -> float:
        marker.write_text(str(trial.number))
        dist.broadcast_object(trial._trial_id)
        return train(trial, chkpt_root)

    run_queued_trials(study, objective)
    dist.broadcast_object(None)
    release_group()


if __name__ == "__main__":
    main(sys.argv[1:])
