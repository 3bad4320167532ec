"""A worker process of an Optuna study run through helios, for the multi-worker tests.

Run as::

    python optuna_worker.py train ROOT N_TRIALS [KILL_TRIAL KILL_EPOCH]
    python optuna_worker.py open ROOT START_TIME ROUNDS GAP

``train`` waits until the file named by ``$OPTUNA_WORKER_GO_FILE`` exists (if set), then
opens (or resumes) the study ``ROOT/study.db`` with
:py:func:`helios.plugins.optuna.resume_study` (heartbeats every second, dead after 3 s) and
runs ``N_TRIALS`` trials of a small regression trained by the Trainer, each epoch paced to
take ``$OPTUNA_WORKER_EPOCH_SECONDS`` (default half a second). The trial with identity
``KILL_TRIAL`` sends itself SIGKILL at the start of epoch ``KILL_EPOCH``. With
``$OPTUNA_WORKER_HOLD_LAST_EPOCH`` set, a trial waits at the start of its last epoch until
another worker has joined the study (written its ``joined-<pid>.json``), so that worker surely
joins while the trial runs, however loaded the machine. Each trial reports
the value of a fixed curve per trial identity (``CURVES``), so the pruning decisions of a
study do not depend on floating point noise; the training itself and its checkpoints are
real. After opening the study it writes the states of the trials it found to
``ROOT/joined-<pid>.json``.

``open`` waits until ``START_TIME + r * GAP`` (a ``time.time()`` value) for each round
``r < ROUNDS`` and then creates or loads the study ``ROOT/race-<r>.db`` and runs one cheap
trial in it, so several such processes race on creating the same new database.

The test module imports nothing from this file.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import sys
import time
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))  # tests/, for toys

import optuna
import torch
from optuna.trial import TrialState

import helios.trainer as hlt
import toys
from helios.plugins import optuna as hlpo

TOTAL_EPOCHS = 4
EPOCH_SECONDS = float(os.environ.get("OPTUNA_WORKER_EPOCH_SECONDS", "0.5"))
HOLD_LAST_EPOCH = bool(os.environ.get("OPTUNA_WORKER_HOLD_LAST_EPOCH"))
# The value each trial reports at each validation cycle, by trial identity. With the median
# pruner below, trial 1 survives only because its first value was good: a re-run that lost
# that value would be pruned at cycle 2.
CURVES = {0: [5.0, 4.0, 3.0, 2.0], 1: [1.0, 6.0, 6.0, 6.0]}
DEFAULT_CURVE = [4.0, 3.5, 3.0, 2.5]


class PacedModel(toys.TunedRegressor):
    def __init__(self, identity: int, kill: tuple[int, int] | None, root: pathlib.Path) -> None:
        super().__init__("worker")
        self.identity = identity
        self.kill = kill
        self.root = root

    def on_training_epoch_start(self, current_epoch: int) -> None:
        if self.kill == (self.identity, current_epoch):
            os.kill(os.getpid(), signal.SIGKILL)
        if HOLD_LAST_EPOCH and current_epoch == TOTAL_EPOCHS:
            _wait_for_another_worker(self.root)
        time.sleep(EPOCH_SECONDS)

    def valid_step(self, batch: Any, step: int) -> None:
        pass

    def on_validation_end(self, validation_cycle: int) -> None:
        curve = CURVES.get(self.identity, DEFAULT_CURVE)
        self.metrics["loss"] = curve[validation_cycle]
        self.plugin.report_metrics(validation_cycle)
        super().on_validation_end(validation_cycle)


def _wait_for_another_worker(root: pathlib.Path) -> None:
    mine = f"joined-{os.getpid()}.json"
    deadline = time.monotonic() + 120
    while not any(p.name != mine for p in root.glob("joined-*.json")):
        if time.monotonic() > deadline:
            raise RuntimeError("no other worker joined the study")
        time.sleep(0.02)


def study_args(root: pathlib.Path, name: str = "study") -> dict[str, Any]:
    return {
        "study_name": name,
        "storage": f"sqlite:///{root / (name + '.db')}",
        "load_if_exists": True,
        "sampler": optuna.samplers.TPESampler(seed=1),
        "pruner": optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0),
    }


def train(root: pathlib.Path, n_trials: int, kill: tuple[int, int] | None) -> None:
    go = os.environ.get("OPTUNA_WORKER_GO_FILE")
    while go is not None and not pathlib.Path(go).exists():
        time.sleep(0.02)
    study = hlpo.resume_study(
        study_args(root),
        failed_states=(TrialState.FAIL, TrialState.RUNNING),
        backup_study=False,
        heartbeat_interval=1,
        grace_period=3,
    )
    # What this worker found when it joined the study.
    seen = [t.state.name for t in study.get_trials(deepcopy=False)]
    (root / f"joined-{os.getpid()}.json").write_text(json.dumps(seen))

    def objective(trial: optuna.Trial) -> float:
        plugin = hlpo.OptunaPlugin(trial, "loss")
        model = PacedModel(hlpo._trial_identity(trial), kill, root)
        trainer = hlt.Trainer(
            run_name="worker",
            train_unit="epoch",
            total_steps=TOTAL_EPOCHS,
            valid_frequency=1,
            chkpt_frequency=1,
            chkpt_root=root / "chkpt",
            use_cpu=True,
            enable_progress_bar=False,
            print_banner=False,
        )
        plugin.configure_trainer(trainer)
        plugin.configure_model(model)
        if not trainer.fit(model, toys.RegressionData()):
            raise RuntimeError("training failed")
        plugin.check_pruned()
        value: float = model.metrics["loss"]
        return value

    study.optimize(objective, n_trials=n_trials)


def open_races(root: pathlib.Path, start: float, rounds: int, gap: float) -> None:
    for r in range(rounds):
        while time.time() < start + r * gap:
            pass
        study = hlpo.resume_study(
            {
                "study_name": "race",
                "storage": f"sqlite:///{root / f'race-{r}.db'}",
                "load_if_exists": True,
            },
            backup_study=False,
        )
        study.optimize(lambda t: t.suggest_float("x", 0.0, 1.0), n_trials=1)


def main() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(1)
    mode, root = sys.argv[1], pathlib.Path(sys.argv[2])
    if mode == "train":
        kill = (int(sys.argv[4]), int(sys.argv[5])) if len(sys.argv) > 4 else None
        train(root, int(sys.argv[3]), kill)
    elif mode == "open":
        open_races(root, float(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
