"""Optuna checkpoints: safe sampler restore, retention in trial folders, removing finished
trials' folders."""

from __future__ import annotations

import json
import pathlib
import pickle
import warnings
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState
from torch import nn

import helios.trainer as hlt
import toys
from helios.plugins import optuna as hlpo

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _objective(trial: optuna.Trial) -> float:
    return trial.suggest_float("x", 0, 1) + trial.suggest_int("y", 0, 3)


SAMPLERS = {
    "random": lambda: optuna.samplers.RandomSampler(seed=3),
    "tpe": lambda: optuna.samplers.TPESampler(seed=3, n_startup_trials=3),
    "tpe-multivariate": lambda: optuna.samplers.TPESampler(
        seed=3, n_startup_trials=3, multivariate=True, group=True, constant_liar=True
    ),
    "nsga2": lambda: optuna.samplers.NSGAIISampler(seed=3, population_size=4),
    "nsga3": lambda: optuna.samplers.NSGAIIISampler(seed=3, population_size=4),
    "qmc": lambda: optuna.samplers.QMCSampler(seed=3),
    "partial-fixed": lambda: optuna.samplers.PartialFixedSampler(
        {"y": 1}, optuna.samplers.TPESampler(seed=3, n_startup_trials=3)
    ),
}


@pytest.mark.parametrize("kind", list(SAMPLERS))
def test_every_builtin_sampler_round_trips(kind: str, tmp_path: pathlib.Path) -> None:
    study = optuna.create_study(sampler=SAMPLERS[kind]())
    study.optimize(_objective, n_trials=8)
    trial = study.ask()
    hlpo.checkpoint_sampler(trial, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        restored = hlpo.restore_sampler(tmp_path)
    assert type(restored) is type(study.sampler)
    # The restored sampler proposes what the original proposes next.
    twin = optuna.create_study(sampler=restored)
    for finished in study.trials:
        if finished.state == TrialState.COMPLETE:
            twin.add_trial(finished)
    study.tell(trial, 1.0)
    assert twin.ask().params == study.ask().params


class _RunsCode:
    def __init__(self, *reduced: Any) -> None:
        self.reduced = reduced

    def __reduce__(self) -> Any:
        return self.reduced


def _malicious_files(marker: pathlib.Path) -> dict[str, bytes]:
    import os

    return {
        "os.system": pickle.dumps(_RunsCode(os.system, (f"touch {marker}",))),
        # An Optuna class outside the samplers: creating an RDB storage creates the file.
        "storage": pickle.dumps(_RunsCode(optuna.storages.RDBStorage, (f"sqlite:///{marker}",))),
        # Protocol 0, by hand: builtins.exec.
        "exec": b"cbuiltins\nexec\n(Vopen(" + repr(str(marker)).encode() + b", 'w')\ntR.",
        # torch.load inside: arbitrary pickles again.
        "torch": b"ctorch.storage\n_load_from_bytes\n(C\x00\ntR.",
    }


@pytest.mark.parametrize("payload", ["os.system", "storage", "exec", "torch"])
def test_a_malicious_sampler_file_is_refused_and_the_study_goes_on(
    payload: str, tmp_path: pathlib.Path
) -> None:
    marker = tmp_path / "pwned"
    root = tmp_path / "samplers"
    root.mkdir()
    (root / "sampler_trial-0.pkl").write_bytes(pickle.dumps(optuna.samplers.RandomSampler()))
    bad = root / "sampler_trial-1.pkl"
    bad.write_bytes(_malicious_files(marker)[payload])
    # The same file really runs its code when unpickled without restriction.
    if payload != "torch":
        probe = tmp_path / "probe.pkl"
        probe.write_bytes(bad.read_bytes())
        with probe.open("rb") as file:
            pickle.load(file)
        assert marker.exists()
        marker.unlink()
    with pytest.warns(RuntimeWarning, match=rf"refused the sampler checkpoint {bad}: .*fresh"):
        sampler = hlpo.restore_sampler(root)
    assert sampler is None
    assert not marker.exists()
    study = optuna.create_study(sampler=sampler or optuna.samplers.RandomSampler(seed=1))
    study.optimize(_objective, n_trials=2)
    assert len(study.trials) == 2


def test_a_file_that_holds_no_sampler_is_refused(tmp_path: pathlib.Path) -> None:
    (tmp_path / "sampler_trial-3.pkl").write_bytes(pickle.dumps({"a": 1}))
    with pytest.warns(RuntimeWarning, match="holds a dict, not an Optuna sampler"):
        assert hlpo.restore_sampler(tmp_path) is None
    (tmp_path / "sampler_trial-4.pkl").write_bytes(b"\x80\x04truncated")
    with pytest.warns(RuntimeWarning, match="sampler_trial-4.pkl"):
        assert hlpo.restore_sampler(tmp_path) is None


# -- trial folders ------------------------------------------------------------------------------


class Tuned(toys.TunedRegressor):
    def valid_step(self, batch: Any, step: int) -> None:
        x, y = batch
        self._val_scores["loss"] = nn.functional.mse_loss(self.net(x), y).item()

    def on_validation_end(self, validation_cycle: int) -> None:
        self.metrics["loss"] = self._val_scores["loss"]
        self.plugin.report_metrics(validation_cycle)
        super().on_validation_end(validation_cycle)


@pytest.mark.slow
def test_trial_folders_are_pruned_and_finished_trials_removed(tmp_path: pathlib.Path) -> None:
    root = tmp_path / "chkpt"
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))

    def objective(trial: optuna.Trial) -> float:
        trainer = hlt.Trainer(
            train_unit="epoch",
            total_steps=4,
            valid_frequency=1,
            chkpt_frequency=1,
            chkpt_root=root,
            chkpt_keep_last=1,
            chkpt_keep_best=1,
            chkpt_best_metric="loss",
            chkpt_best_mode="min",
            use_cpu=True,
            print_banner=False,
        )
        model = Tuned("tuned")
        plugin = hlpo.OptunaPlugin(trial, "loss")
        plugin.configure_trainer(trainer)
        plugin.configure_model(model)
        if trial.number == 2:
            raise RuntimeError("a failed trial keeps its folder for resume_study")
        assert trainer.fit(model, toys.RegressionData(16, "sum", 8, 8, shuffle=False))
        return float(model.metrics["loss"])

    study.optimize(objective, n_trials=4, catch=(RuntimeError,))
    for number in (0, 1, 3):
        folder = root / f"tuned_trial-{number}"
        checkpoints = sorted(p.name for p in folder.glob("*.pth"))
        index = json.loads((folder / "checkpoints.json").read_text())
        assert 1 <= len(checkpoints) <= 2, checkpoints  # the newest, and the best if older
        assert index["best"] in checkpoints and index["newest"] in checkpoints
    (root / "tuned_trial-2").mkdir()  # the failed trial's folder (it failed in setup)

    removed = hlpo.remove_finished_trial_checkpoints(study, root, "tuned")
    best = study.best_trial.number
    assert sorted(removed) == sorted(root / f"tuned_trial-{n}" for n in (0, 1, 3) if n != best)
    assert sorted(p.name for p in root.iterdir()) == sorted(
        [f"tuned_trial-{best}", "tuned_trial-2"]
    )
    removed = hlpo.remove_finished_trial_checkpoints(study, root, "tuned", keep_best_trial=False)
    assert removed == [root / f"tuned_trial-{best}"]
    assert [p.name for p in root.iterdir()] == ["tuned_trial-2"]
