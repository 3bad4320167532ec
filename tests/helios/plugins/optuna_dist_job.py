"""Two Optuna trials trained by 2 gloo processes, for the distributed OptunaPlugin test.

Run under ``torchrun``::

    python -m torch.distributed.run --standalone --nproc_per_node=2 optuna_dist_job.py WORKDIR

The study lives in ``WORKDIR/study.db``. Rank 0 asks the study for each trial and sends the
trial id to rank 1, which opens the same trial from the storage. Trial 0 is pruned at its
second validation cycle; trial 1 runs to the end. Each rank writes ``rank<r>.json`` with what
it saw. The test module imports nothing from this file.
"""

from __future__ import annotations

import json
import pathlib
import sys
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))  # tests/, for toys

import optuna
import torch
from optuna.trial import TrialState
from torch import nn

import helios.trainer as hlt
import toys
from helios.core import distributed as dist
from helios.plugins import optuna as hlpo

TOTAL_EPOCHS = 4


class PruneFirstTrial(optuna.pruners.BasePruner):
    """Prunes trial 0 once it has reported two values."""

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return trial.number == 0 and len(trial.intermediate_values) >= 2


class TunedModel(toys.TunedRegressor):
    lr_range = (1e-3, 1e-2)
    lr_log = False

    def __init__(self) -> None:
        super().__init__("dist-tuned")
        self.epochs: list[int] = []

    def on_training_epoch_start(self, current_epoch: int) -> None:
        self.epochs.append(current_epoch)

    def on_validation_start(self, validation_cycle: int) -> None:
        super().on_validation_start(validation_cycle)
        self._val_scores["sum"] = torch.zeros(())
        self._val_scores["count"] = torch.zeros(())

    def valid_step(self, batch: Any, step: int) -> None:
        x, y = batch
        self._val_scores["sum"] += nn.functional.mse_loss(self.net(x), y, reduction="sum")
        self._val_scores["count"] += len(x)

    def on_validation_end(self, validation_cycle: int) -> None:
        # Synchronising the metric across ranks is the model's job.
        total = dist.all_reduce_mean(self._val_scores["sum"].clone())
        count = dist.all_reduce_mean(self._val_scores["count"].clone())
        self.metrics["loss"] = float(total / count)
        self.plugin.report_metrics(validation_cycle)
        super().on_validation_end(validation_cycle)


def run_trial(workdir: pathlib.Path, study: optuna.Study) -> dict[str, Any]:
    rank = dist.get_global_rank()
    trial_id = study.ask()._trial_id if rank == 0 else None
    trial_id = dist.broadcast_object(trial_id, src=0)
    trial = optuna.Trial(study, trial_id)

    model = TunedModel()
    trainer = hlt.Trainer(
        run_name="dist-optuna",
        train_unit="epoch",
        total_steps=TOTAL_EPOCHS,
        valid_frequency=1,
        chkpt_frequency=1,
        chkpt_root=workdir / "chkpt",
        use_cpu=True,
        print_banner=False,
    )
    plugin = hlpo.OptunaPlugin(trial, "loss")
    plugin.configure_trainer(trainer)
    plugin.configure_model(model)
    fit_ok = trainer.fit(model, toys.RegressionData(target="sum", batch_size=4, valid_batch_size=8))

    pruned_message = None
    try:
        plugin.check_pruned()
    except optuna.TrialPruned as error:
        pruned_message = str(error)
    if rank == 0:
        if pruned_message is None:
            study.tell(trial, model.metrics["loss"])
        else:
            study.tell(trial, state=TrialState.PRUNED)
    dist.safe_barrier()
    return {
        "number": trial.number,
        "fit_ok": fit_ok,
        "is_distributed": trainer.is_distributed,
        "epochs": model.epochs,
        "lr": model.lr,
        "pruned": pruned_message,
    }


def main() -> None:
    workdir = pathlib.Path(sys.argv[1])
    dist.init_dist("gloo")
    rank = dist.get_global_rank()
    study_args: dict[str, Any] = {
        "study_name": "dist",
        "storage": f"sqlite:///{workdir / 'study.db'}",
        "load_if_exists": True,
    }
    if rank == 0:
        study = optuna.create_study(pruner=PruneFirstTrial(), **study_args)
    dist.safe_barrier()
    if rank != 0:
        study = optuna.create_study(**study_args)
    results = [run_trial(workdir, study) for _ in range(2)]
    (workdir / f"rank{rank}.json").write_text(json.dumps(results))
    dist.shutdown_dist()


if __name__ == "__main__":
    main()
