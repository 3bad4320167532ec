"""Optuna checkpoints: safe sampler restore, retention in trial folders, removing finished
trials' folders."""

from __future__ import annotations

import inspect
import json
import pathlib
import pickle
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import optuna
import pytest
from torch import nn

import helios.trainer as hlt
import toys
from helios.plugins import optuna as hlpo

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _objective(trial: optuna.Trial) -> float:
    return trial.suggest_float("x", 0, 1) + trial.suggest_int("y", 0, 3)


S = optuna.samplers
GRID = {"x": [0.0, 0.5, 1.0], "y": [0, 3], "c": ["a", "b"]}

# Every built-in sampler, each on its own kind of study: a sampler factory, whether the
# search space is discrete (grid and brute force), and the number of objectives.
SAMPLERS: dict[str, tuple[Callable[[], optuna.samplers.BaseSampler], bool, int]] = {
    "random": (lambda: S.RandomSampler(seed=3), False, 1),
    "tpe": (lambda: S.TPESampler(seed=3, n_startup_trials=3), False, 1),
    "tpe-multivariate": (
        lambda: S.TPESampler(
            seed=3, n_startup_trials=3, multivariate=True, group=True, constant_liar=True
        ),
        False,
        1,
    ),
    "gp": (lambda: S.GPSampler(seed=3, n_startup_trials=3), False, 1),
    "cmaes": (
        lambda: S.CmaEsSampler(
            seed=3, n_startup_trials=2, popsize=4, warn_independent_sampling=False
        ),
        False,
        1,
    ),
    "nsga2": (lambda: S.NSGAIISampler(seed=3, population_size=4), False, 2),
    "nsga3": (lambda: S.NSGAIIISampler(seed=3, population_size=4), False, 2),
    "qmc": (lambda: S.QMCSampler(seed=3, warn_independent_sampling=False), False, 1),
    "grid": (lambda: S.GridSampler(GRID, seed=3), True, 1),
    "brute-force": (lambda: S.BruteForceSampler(seed=3), True, 1),
    "partial-fixed": (
        lambda: S.PartialFixedSampler({"y": 1}, S.TPESampler(seed=3, n_startup_trials=3)),
        False,
        1,
    ),
}


def test_the_sampler_list_covers_every_builtin_sampler() -> None:
    builtin = {
        cls
        for name in S.__all__
        if isinstance(cls := getattr(S, name), type)
        and issubclass(cls, S.BaseSampler)
        and not inspect.isabstract(cls)
    }
    assert builtin == {type(make()) for make, _, _ in SAMPLERS.values()}


def _checkpointing_objective(root: pathlib.Path, discrete: bool, objectives: int) -> Any:
    def objective(trial: optuna.Trial) -> float | tuple[float, float]:
        x = trial.suggest_float("x", 0, 1, step=0.5 if discrete else None)
        y = trial.suggest_int("y", 0, 3, step=3 if discrete else 1)
        c = trial.suggest_categorical("c", ["a", "b"])
        hlpo.checkpoint_sampler(trial, root)
        value = (x - 0.3) ** 2 + y + (c == "b")
        return value if objectives == 1 else (value, (x - 0.8) ** 2 - y)

    return objective


# The GP sampler fits a Gaussian process at every trial: seconds, not milliseconds.
KINDS = [pytest.param(k, marks=pytest.mark.slow) if k == "gp" else k for k in SAMPLERS]


@pytest.mark.parametrize("kind", KINDS)
def test_every_builtin_sampler_resumes_as_if_never_stopped(
    kind: str, tmp_path: pathlib.Path
) -> None:
    make, discrete, objectives = SAMPLERS[kind]
    trials, stop_after = 9, 5

    def study(storage: optuna.storages.BaseStorage, sampler: Any) -> optuna.Study:
        return optuna.create_study(
            study_name="study",
            storage=storage,
            load_if_exists=True,
            sampler=sampler,
            directions=["minimize"] * objectives,
        )

    straight = study(optuna.storages.InMemoryStorage(), make())
    straight.optimize(
        _checkpointing_objective(tmp_path / "straight", discrete, objectives), n_trials=trials
    )

    # The same study stopped after a few trials and resumed in a new study object with the
    # sampler read back from its last checkpoint.
    samplers = tmp_path / "samplers"
    storage = optuna.storages.InMemoryStorage()
    stopped = study(storage, make())
    stopped.optimize(_checkpointing_objective(samplers, discrete, objectives), n_trials=stop_after)
    original = stopped.sampler
    del stopped
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a refused file would warn
        restored = hlpo.restore_sampler(samplers)
    assert type(restored) is type(original) and restored is not original
    resumed = study(storage, restored)
    resumed.optimize(
        _checkpointing_objective(samplers, discrete, objectives), n_trials=trials - stop_after
    )

    # The grid and QMC samplers keep their progress in the study, so this also shows that
    # the restored sampler continues it; the others draw from their restored random state.
    params = [trial.params for trial in resumed.trials]
    assert params == [trial.params for trial in straight.trials]
    assert len({repr(p) for p in params}) > 1  # the sampler really drew different values


def test_a_checkpoint_that_cannot_be_written_keeps_the_previous_one(
    tmp_path: pathlib.Path,
) -> None:
    class Unsaveable(S.RandomSampler):
        def __init__(self) -> None:
            super().__init__(seed=0)
            self.callback = lambda: None  # a local function: pickle refuses it

    study = optuna.create_study(sampler=S.RandomSampler(seed=0))
    hlpo.checkpoint_sampler(study.ask(), tmp_path)
    saved = (tmp_path / "sampler_trial-0.pkl").read_bytes()
    study.sampler = Unsaveable()
    trial = study.ask()
    with pytest.raises(TypeError, match=r"cannot checkpoint the sampler Unsaveable"):
        hlpo.checkpoint_sampler(trial, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sampler_trial-0.pkl"]
    assert (tmp_path / "sampler_trial-0.pkl").read_bytes() == saved


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


class _Record:
    def __init__(self, record: tuple[Any, ...]) -> None:
        self.record = record


class _RecordPickler(pickle.Pickler):
    """Writes _Record objects as the records (persistent ids) of a sampler checkpoint."""

    def persistent_id(self, obj: Any) -> Any:
        return obj.record if isinstance(obj, _Record) else None


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (("os.system", "touch pwned"), "not a record"),
        (("torch.dtype", "load"), "not a record"),
        (("tensor", np.array(["a"], dtype=object), False), "not a record"),
        (("tensor", [1.0], False), "not a record"),
        (("tensor", np.array([1]), True), "not a record"),
        (("lock", "extra"), "not a record"),
    ],
)
def test_a_forged_record_in_a_sampler_file_is_refused(
    record: tuple[Any, ...], reason: str, tmp_path: pathlib.Path
) -> None:
    sampler = optuna.samplers.RandomSampler(seed=0)
    sampler.extra = _Record(record)  # type: ignore[attr-defined]
    with (tmp_path / "sampler_trial-0.pkl").open("wb") as file:
        _RecordPickler(file, protocol=4).dump(sampler)
    with pytest.warns(RuntimeWarning, match=reason):
        assert hlpo.restore_sampler(tmp_path) is None


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


@pytest.mark.slow
def test_trial_folders_in_an_object_store(s3_bucket: str) -> None:
    # Each trial checkpoints into its own folder of the store, and a trial run again
    # (the same hl:id) resumes from it; finished trials' folders are removed from the store.
    root = f"{s3_bucket}/tuning"
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))

    def objective(trial: optuna.Trial) -> float:
        trainer = hlt.Trainer(
            train_unit="epoch",
            total_steps=2,
            valid_frequency=1,
            chkpt_frequency=1,
            chkpt_root=root,
            chkpt_best_metric="loss",
            chkpt_best_mode="min",
            use_cpu=True,
            print_banner=False,
        )
        model = Tuned("tuned")
        plugin = hlpo.OptunaPlugin(trial, "loss")
        plugin.configure_trainer(trainer)
        plugin.configure_model(model)
        assert trainer.fit(model, toys.RegressionData(16, "sum", 8, 8, shuffle=False))
        return float(model.metrics["loss"])

    study.optimize(objective, n_trials=2)
    for number in (0, 1):
        folder = f"{root}/tuned_trial-{number}"
        newest = hlt.find_last_checkpoint(folder)
        assert newest is not None and newest.name.endswith("_iter_4.pth")
        assert hlt.find_best_checkpoint(folder) is not None

    removed = hlpo.remove_finished_trial_checkpoints(study, root, "tuned")
    best = study.best_trial.number
    assert removed == [f"{root}/tuned_trial-{1 - best}"]
    assert hlt.find_last_checkpoint(f"{root}/tuned_trial-{1 - best}") is None
    assert hlt.find_last_checkpoint(f"{root}/tuned_trial-{best}") is not None
