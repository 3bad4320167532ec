"""Optuna studies driven through Trainer.fit with the OptunaPlugin (SQLite in tmp_path)."""

from __future__ import annotations

import pathlib
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState
from torch import nn

import helios.trainer as hlt
import toys
from helios.plugins import optuna as hlpo

optuna.logging.set_verbosity(optuna.logging.WARNING)

TOTAL_EPOCHS = 3


class TunedModel(toys.TunedRegressor):
    """Reports its validation loss to the trial; can crash once to simulate a kill."""

    def __init__(
        self,
        events: list[str],
        crash_in_epoch: int | None = None,
        curve: list[float] | None = None,
    ) -> None:
        super().__init__("tuned")
        self.events = events
        self.crash_in_epoch = crash_in_epoch
        self.curve = curve

    def on_training_epoch_start(self, current_epoch: int) -> None:
        self.events.append(f"epoch {current_epoch}")
        if current_epoch == self.crash_in_epoch:
            raise RuntimeError("simulated crash")

    def on_validation_start(self, validation_cycle: int) -> None:
        super().on_validation_start(validation_cycle)
        self._val_scores["loss"] = 0.0
        self._val_scores["count"] = 0

    def valid_step(self, batch: Any, step: int) -> None:
        x, y = batch
        self._val_scores["loss"] += nn.functional.mse_loss(self.net(x), y, reduction="sum").item()
        self._val_scores["count"] += len(x)

    def on_validation_end(self, validation_cycle: int) -> None:
        self.metrics["loss"] = self._val_scores["loss"] / self._val_scores["count"]
        if self.curve is not None:  # a fixed curve, so pruning does not hang on rounding
            self.metrics["loss"] = self.curve[validation_cycle]
        self.plugin.report_metrics(validation_cycle)
        super().on_validation_end(validation_cycle)

    def on_training_end(self) -> None:
        self.events.append("on_training_end")


class PruneTrials(optuna.pruners.BasePruner):
    """Prunes the listed trial numbers at their first report."""

    def __init__(self, numbers: set[int]) -> None:
        self.numbers = numbers

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return trial.number in self.numbers


def study_args(root: pathlib.Path, pruner: optuna.pruners.BasePruner) -> dict[str, Any]:
    return {
        "study_name": "e2e",
        "storage": f"sqlite:///{root / 'study.db'}",
        "load_if_exists": True,
        "sampler": optuna.samplers.TPESampler(seed=1),
        "pruner": pruner,
    }


def make_objective(
    root: pathlib.Path,
    events: dict[int, list[str]],
    crash_in_epoch: int | None = None,
    curves: dict[int, list[float]] | None = None,
) -> Any:
    def objective(trial: optuna.Trial) -> float:
        trial_events = events.setdefault(trial.number, [])
        curve = None if curves is None else curves[hlpo._trial_identity(trial)]
        model = TunedModel(trial_events, crash_in_epoch, curve)
        trainer = hlt.Trainer(
            run_name="e2e",
            train_unit="epoch",
            total_steps=TOTAL_EPOCHS,
            valid_frequency=1,
            chkpt_frequency=1,
            chkpt_root=root / "chkpt",
            use_cpu=True,
            enable_progress_bar=False,
            print_banner=False,
        )
        plugin = hlpo.OptunaPlugin(trial, "loss")
        plugin.configure_trainer(trainer)
        plugin.configure_model(model)
        hlpo.checkpoint_sampler(trial, root / "samplers")
        if not trainer.fit(model, toys.RegressionData()):
            raise RuntimeError("training failed")
        plugin.check_pruned()
        value: float = model.metrics["loss"]
        return value

    return objective


def test_optuna_study_completes_and_prunes_trials(tmp_path: pathlib.Path) -> None:
    events: dict[int, list[str]] = {}
    study = optuna.create_study(**study_args(tmp_path, PruneTrials({1})))
    study.optimize(make_objective(tmp_path, events), n_trials=3)

    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.COMPLETE]

    # The metric of the model reaches the study at every validation cycle.
    complete = study.trials[0]
    assert sorted(complete.intermediate_values) == [0, 1, 2]
    assert complete.value == complete.intermediate_values[2]
    assert events[0] == ["epoch 1", "epoch 2", "epoch 3", "on_training_end"]

    # The pruned trial stops after the first validation; the model's end hook runs once.
    pruned = study.trials[1]
    assert pruned.intermediate_values.keys() == {0}
    assert pruned.user_attrs == {hlpo._PRUNED_KEY: True, hlpo._CYCLE_KEY: 0}
    assert events[1] == ["epoch 1", "on_training_end"]

    # Each trial trains under its own checkpoint folder.
    folders = sorted(p.name for p in (tmp_path / "chkpt").iterdir())
    assert folders == ["tuned_trial-0", "tuned_trial-1", "tuned_trial-2"]

    restored = hlpo.restore_sampler(tmp_path / "samplers")
    assert isinstance(restored, optuna.samplers.TPESampler)


def test_optuna_interrupted_trial_resumes_its_checkpoint(tmp_path: pathlib.Path) -> None:
    events: dict[int, list[str]] = {}
    study = optuna.create_study(**study_args(tmp_path, optuna.pruners.NopPruner()))
    study.optimize(make_objective(tmp_path, events), n_trials=1)
    # Trial 1 crashes in its second epoch, after the checkpoint of epoch 1 was written.
    study.optimize(
        make_objective(tmp_path, events, crash_in_epoch=2), n_trials=1, catch=(RuntimeError,)
    )
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.FAIL]
    failed_params = study.trials[1].params
    del study

    sampler = hlpo.restore_sampler(tmp_path / "samplers")
    assert sampler is not None
    args = study_args(tmp_path, optuna.pruners.NopPruner())
    args["sampler"] = sampler
    study = hlpo.resume_study(args)
    assert (tmp_path / "study_bkp-0.db").exists()
    study.optimize(make_objective(tmp_path, events), n_trials=2)

    trials = study.trials
    assert [t.state for t in trials] == [
        TrialState.COMPLETE,
        TrialState.FAIL,
        TrialState.COMPLETE,
        TrialState.COMPLETE,
    ]
    rerun = trials[2]
    assert rerun.user_attrs == {hlpo._ORIG_NUMBER_KEY: 1}
    assert rerun.params == failed_params
    # The re-run picks up the failed trial's checkpoint and trains the remaining epochs.
    assert events[1] == ["epoch 1", "epoch 2"]
    assert events[2] == ["epoch 2", "epoch 3", "on_training_end"]
    # Validation cycle 0 was reported by the failed trial and carried over to the re-run,
    # which reported the cycles after its checkpoint.
    assert sorted(rerun.intermediate_values) == [0, 1, 2]
    assert rerun.intermediate_values[0] == trials[1].intermediate_values[0]
    # A new trial after the re-run trains from scratch under its own number.
    assert events[3] == ["epoch 1", "epoch 2", "epoch 3", "on_training_end"]
    folders = sorted(p.name for p in (tmp_path / "chkpt").iterdir())
    assert folders == ["tuned_trial-0", "tuned_trial-1", "tuned_trial-3"]


@pytest.mark.parametrize("crash", [False, True])
def test_optuna_pruned_trial_is_not_resumed(tmp_path: pathlib.Path, crash: bool) -> None:
    events: dict[int, list[str]] = {}
    study = optuna.create_study(**study_args(tmp_path, PruneTrials({0})))
    study.optimize(make_objective(tmp_path, events), n_trials=1)
    if crash:
        study.optimize(
            make_objective(tmp_path, events, crash_in_epoch=1), n_trials=1, catch=(RuntimeError,)
        )
    del study
    study = hlpo.resume_study(study_args(tmp_path, PruneTrials({0})))
    waiting = [t for t in study.trials if t.state == TrialState.WAITING]
    assert study.trials[0].state == TrialState.PRUNED
    assert len(waiting) == (1 if crash else 0)


# Trial 1 survives the median pruner only thanks to its first value; a re-run that lost
# the values reported before the interruption would be pruned at cycle 2.
CURVES = {0: [5.0, 4.0, 3.0], 1: [1.0, 6.0, 6.0]}


def pruning_study(root: pathlib.Path) -> dict[str, Any]:
    root.mkdir(exist_ok=True)
    return study_args(root, optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0))


def test_optuna_interrupted_trial_prunes_as_if_never_stopped(tmp_path: pathlib.Path) -> None:
    events: dict[int, list[str]] = {}
    straight = optuna.create_study(**pruning_study(tmp_path / "straight"))
    straight.optimize(make_objective(tmp_path / "straight", events, curves=CURVES), n_trials=2)

    root = tmp_path / "interrupted"
    study = optuna.create_study(**pruning_study(root))
    study.optimize(make_objective(root, events, curves=CURVES), n_trials=1)
    # Trial 1 crashes at the start of epoch 3, after reporting cycles 0 and 1.
    study.optimize(
        make_objective(root, events, crash_in_epoch=3, curves=CURVES),
        n_trials=1,
        catch=(RuntimeError,),
    )
    del study
    study = hlpo.resume_study(pruning_study(root), backup_study=False)
    study.optimize(make_objective(root, events, curves=CURVES), n_trials=1)

    resumed = [t for t in study.trials if t.state != TrialState.FAIL]
    assert [t.state for t in straight.trials] == [TrialState.COMPLETE, TrialState.COMPLETE]
    assert [(t.state, t.intermediate_values, t.value) for t in resumed] == [
        (t.state, t.intermediate_values, t.value) for t in straight.trials
    ]
    assert resumed[1].user_attrs == {hlpo._ORIG_NUMBER_KEY: 1}
