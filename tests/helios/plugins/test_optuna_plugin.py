"""Unit tests of helios.plugins.optuna on real SQLite studies (no training loop)."""

from __future__ import annotations

import datetime
import pathlib
import sqlite3
import subprocess
import sys
import textwrap
import warnings
from typing import Any

import optuna
import pytest
import torch
from optuna.trial import TrialState

import helios.model as hlm
import helios.plugins as hlp
from helios.plugins import optuna as hlpo

optuna.logging.set_verbosity(optuna.logging.WARNING)


class MetricModel(hlm.Model):
    def __init__(self) -> None:
        super().__init__("plugin-model")
        self.training_end_calls = 0

    def setup(self, fast_init: bool = False) -> None:
        pass

    def on_training_end(self) -> None:
        self.training_end_calls += 1


class FakeTrainer:
    def __init__(self, model: hlm.Model | None = None) -> None:
        self.plugins: dict[str, hlp.Plugin] = {}
        self.train_exceptions: list[type[Exception]] = []
        self.test_exceptions: list[type[Exception]] = []
        self.model = model


class AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return True


def storage_url(path: pathlib.Path) -> str:
    return f"sqlite:///{path}"


def make_study(
    tmp_path: pathlib.Path, pruner: optuna.pruners.BasePruner | None = None
) -> optuna.Study:
    return optuna.create_study(
        study_name="unit",
        storage=storage_url(tmp_path / "unit.db"),
        load_if_exists=True,
        pruner=pruner,
    )


def make_plugin(
    trial: optuna.Trial, metrics: dict[str, Any] | None = None
) -> tuple[hlpo.OptunaPlugin, MetricModel, FakeTrainer]:
    model = MetricModel()
    model.metrics.update(metrics or {})
    trainer = FakeTrainer(model)
    plugin = hlpo.OptunaPlugin(trial, "accuracy")
    plugin.configure_trainer(trainer)  # type: ignore[arg-type]
    plugin.configure_model(model)
    plugin.trainer = trainer  # type: ignore[assignment]
    plugin.device = torch.device("cpu")
    plugin.setup()
    return plugin, model, trainer


# -- import behaviour ------------------------------------------------------------------------


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_optuna_import_without_optuna_names_the_extra() -> None:
    result = run_python(
        """
        import sys
        sys.modules["optuna"] = None
        try:
            import helios.plugins.optuna
        except ImportError as error:
            print(error)
        else:
            print("imported")
        """
    )
    assert result.returncode == 0, result.stderr
    assert 'pip install "helios-blaze[tune]"' in result.stdout


@pytest.mark.slow
def test_optuna_not_imported_by_helios_plugins() -> None:
    result = run_python(
        """
        import sys
        import helios.model, helios.plugins
        print("optuna" in sys.modules)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_optuna_plugin_is_registered() -> None:
    assert "OptunaPlugin" in hlp.PLUGIN_REGISTRY
    study = optuna.create_study()
    plugin = hlp.create_plugin("OptunaPlugin", study.ask(), "loss")
    assert isinstance(plugin, hlpo.OptunaPlugin)


# -- _backup_study ---------------------------------------------------------------------------


def test_optuna_backup_study_missing_file_is_noop(tmp_path: pathlib.Path) -> None:
    assert hlpo._backup_study(tmp_path / "missing.db") is None
    assert list(tmp_path.iterdir()) == []


def test_optuna_backup_study_numbers_backups(tmp_path: pathlib.Path) -> None:
    db = tmp_path / "test.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE t (x INTEGER)")
        conn.execute("INSERT INTO t VALUES (42)")
    conn.close()
    # Another study's backups do not shift the numbering.
    (tmp_path / "other_bkp-7.db").touch()

    for i in range(10):
        assert hlpo._backup_study(db) == tmp_path / f"test_bkp-{i}.db"

    names = sorted(p.name for p in tmp_path.glob("test_bkp-*.db"))
    assert names == sorted(f"test_bkp-{i}.db" for i in range(10))
    backup = sqlite3.connect(tmp_path / "test_bkp-9.db")
    assert backup.execute("SELECT x FROM t").fetchall() == [(42,)]
    backup.close()


# -- resume_study: argument checks -----------------------------------------------------------


@pytest.mark.parametrize(
    ("study_args", "error", "match"),
    [
        ([], TypeError, "expected 'study_args' to be a dict"),
        ({"load_if_exists": True}, ValueError, "must contain the key 'storage'"),
        (
            {"storage": optuna.storages.InMemoryStorage(), "load_if_exists": True},
            TypeError,
            r"study_args\['storage'\] to be a database URL string .* got InMemoryStorage",
        ),
        (
            {"storage": "mysql://user:secret@host/db", "load_if_exists": True},
            ValueError,
            r"SQLite file or of a PostgreSQL database.* got 'mysql://user:\*\*\*@host/db'",
        ),
        (
            {"storage": "sqlite://", "load_if_exists": True},
            ValueError,
            "starting with 'sqlite:///', got 'sqlite://'",
        ),
        (
            {"storage": "sqlite:///:memory:", "load_if_exists": True},
            ValueError,
            "URL of an SQLite file",
        ),
        ({"storage": "sqlite:///x.db"}, ValueError, r"'load_if_exists'\] must be True.*None"),
        (
            {"storage": "sqlite:///x.db", "load_if_exists": False},
            ValueError,
            r"'load_if_exists'\] must be True.*False",
        ),
    ],
)
def test_optuna_resume_study_checks_study_args(
    study_args: Any, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        hlpo.resume_study(study_args)


@pytest.mark.parametrize("state", [TrialState.PRUNED, TrialState.COMPLETE, TrialState.WAITING])
def test_optuna_resume_study_rejects_non_failure_states(
    tmp_path: pathlib.Path, state: TrialState
) -> None:
    args = {"storage": storage_url(tmp_path / "s.db"), "load_if_exists": True}
    with pytest.raises(ValueError, match=f"may only hold .* got {state}"):
        hlpo.resume_study(args, failed_states=(TrialState.FAIL, state))
    with pytest.raises(TypeError, match="TrialState values, got 'FAIL'"):
        hlpo.resume_study(args, failed_states=("FAIL",))  # type: ignore[arg-type]
    assert not (tmp_path / "s.db").exists()


# -- resume_study: behaviour -----------------------------------------------------------------


def resume_args(tmp_path: pathlib.Path) -> dict[str, Any]:
    return {
        "study_name": "resume",
        "storage": storage_url(tmp_path / "resume.db"),
        "load_if_exists": True,
    }


def add_trial(
    study: optuna.Study,
    state: TrialState,
    x: float,
    user_attrs: dict[str, Any] | None = None,
) -> None:
    study.add_trial(
        optuna.trial.create_trial(
            state=state,
            params={"x": x},
            distributions={"x": optuna.distributions.FloatDistribution(0, 10)},
            value=x if state == TrialState.COMPLETE else None,
            user_attrs=user_attrs,
        )
    )


def test_optuna_resume_study_empty_study(tmp_path: pathlib.Path) -> None:
    study = hlpo.resume_study(resume_args(tmp_path))
    assert study.trials == []
    assert (tmp_path / "resume.db").exists()
    assert list(tmp_path.glob("*_bkp-*")) == []


def test_optuna_resume_study_requeues_failed_and_keeps_finished(
    tmp_path: pathlib.Path,
) -> None:
    study = optuna.create_study(**resume_args(tmp_path))
    add_trial(study, TrialState.COMPLETE, 1.0)  # 0
    add_trial(study, TrialState.FAIL, 2.0)  # 1
    add_trial(study, TrialState.PRUNED, 3.0)  # 2
    add_trial(study, TrialState.FAIL, 4.0)  # 3: re-run below as trial 4
    add_trial(study, TrialState.COMPLETE, 4.0, {hlpo._ORIG_NUMBER_KEY: 3, "note": "kept"})  # 4
    add_trial(study, TrialState.RUNNING, 5.0)  # 5: not a failure by default
    del study

    resumed = hlpo.resume_study(resume_args(tmp_path))
    assert (tmp_path / "resume_bkp-0.db").exists()

    trials = resumed.get_trials()
    by_state = {s: [t.number for t in trials if t.state == s] for s in TrialState}
    assert by_state[TrialState.COMPLETE] == [0, 4]
    assert by_state[TrialState.PRUNED] == [2]
    assert by_state[TrialState.FAIL] == [1, 3]
    assert by_state[TrialState.RUNNING] == [5]
    assert by_state[TrialState.WAITING] == [6]
    # The failed-but-completed trial keeps everything.
    assert trials[4].user_attrs == {hlpo._ORIG_NUMBER_KEY: 3, "note": "kept"}
    assert trials[4].value == 4.0
    assert trials[0].params == {"x": 1.0}

    waiting = trials[6]
    assert waiting.user_attrs == {hlpo._ORIG_NUMBER_KEY: 1}
    assert waiting.system_attrs["fixed_params"] == {"x": 2.0}

    # Running the queued trial gets the failed trial's parameters.
    resumed.optimize(lambda t: t.suggest_float("x", 0, 10), n_trials=1)
    rerun = resumed.trials[6]
    assert rerun.state == TrialState.COMPLETE
    assert rerun.params == {"x": 2.0}
    assert rerun.user_attrs[hlpo._ORIG_NUMBER_KEY] == 1


def test_optuna_resume_study_is_idempotent(tmp_path: pathlib.Path) -> None:
    study = optuna.create_study(**resume_args(tmp_path))
    add_trial(study, TrialState.FAIL, 2.0)
    del study

    hlpo.resume_study(resume_args(tmp_path))
    study = hlpo.resume_study(resume_args(tmp_path), backup_study=False)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.WAITING]
    assert sorted(p.name for p in tmp_path.glob("*_bkp-*")) == ["resume_bkp-0.db"]


def test_optuna_resume_study_failed_rerun_is_queued_once(tmp_path: pathlib.Path) -> None:
    study = optuna.create_study(**resume_args(tmp_path))
    add_trial(study, TrialState.FAIL, 2.0)  # 0
    add_trial(study, TrialState.FAIL, 2.0, {hlpo._ORIG_NUMBER_KEY: 0})  # 1: re-run failed
    del study

    study = hlpo.resume_study(resume_args(tmp_path), backup_study=False)
    waiting = [t for t in study.trials if t.state == TrialState.WAITING]
    assert len(waiting) == 1
    assert waiting[0].user_attrs == {hlpo._ORIG_NUMBER_KEY: 0}


def test_optuna_resume_study_running_as_failure(tmp_path: pathlib.Path) -> None:
    study = optuna.create_study(**resume_args(tmp_path))
    add_trial(study, TrialState.COMPLETE, 1.0)
    add_trial(study, TrialState.RUNNING, 7.0)
    del study

    # Without heartbeats, every RUNNING trial counts as dead (a single worker).
    study = hlpo.resume_study(
        resume_args(tmp_path),
        failed_states=(TrialState.FAIL, TrialState.RUNNING),
        heartbeat_interval=None,
    )
    assert [t.state for t in study.trials] == [
        TrialState.COMPLETE,
        TrialState.FAIL,
        TrialState.WAITING,
    ]
    assert study.trials[2].user_attrs == {hlpo._ORIG_NUMBER_KEY: 1}
    assert study.trials[2].system_attrs["fixed_params"] == {"x": 7.0}


def add_running_trial(study: optuna.Study, x: float, started_ago: float) -> int:
    """Add a RUNNING trial (no heartbeat) that started ``started_ago`` seconds ago."""
    trial = optuna.trial.create_trial(
        state=TrialState.RUNNING,
        params={"x": x},
        distributions={"x": optuna.distributions.FloatDistribution(0, 10)},
    )
    trial.datetime_start = datetime.datetime.now() - datetime.timedelta(seconds=started_ago)
    study.add_trial(trial)
    return study.trials[-1]._trial_id


def test_optuna_resume_study_heartbeats_tell_live_from_dead(tmp_path: pathlib.Path) -> None:
    study = optuna.create_study(**resume_args(tmp_path))
    add_running_trial(study, 1.0, started_ago=3600)  # 0: no heartbeat, long ago: dead
    add_running_trial(study, 2.0, started_ago=0)  # 1: no heartbeat yet, just started
    live = add_running_trial(study, 3.0, started_ago=3600)  # 2: beats
    stale = add_running_trial(study, 4.0, started_ago=3600)  # 3: its heartbeat is old
    storage = optuna.storages.RDBStorage(storage_url(tmp_path / "resume.db"))
    storage.record_heartbeat(live)
    storage.record_heartbeat(stale)
    with sqlite3.connect(tmp_path / "resume.db") as connection:
        connection.execute(
            "UPDATE trial_heartbeats SET heartbeat = datetime(heartbeat, '-1 hour') "
            "WHERE trial_id = ?",
            (stale,),
        )
    del study

    study = hlpo.resume_study(
        resume_args(tmp_path),
        failed_states=(TrialState.FAIL, TrialState.RUNNING),
        heartbeat_interval=5,
        grace_period=60,
    )
    trials = study.trials
    assert [t.state for t in trials[:4]] == [
        TrialState.FAIL,
        TrialState.RUNNING,
        TrialState.RUNNING,
        TrialState.FAIL,
    ]
    waiting = [(t.user_attrs[hlpo._ORIG_NUMBER_KEY], t.params) for t in trials[4:]]
    assert [t.state for t in trials[4:]] == [TrialState.WAITING] * 2
    assert sorted(w[0] for w in waiting) == [0, 3]

    # A stale heartbeat is death even when RUNNING is not listed as a failure; a trial
    # without heartbeats is then left alone.
    study = optuna.create_study(**{**resume_args(tmp_path), "study_name": "other"})
    add_running_trial(study, 1.0, started_ago=3600)
    stale = add_running_trial(study, 4.0, started_ago=3600)
    storage.record_heartbeat(stale)
    with sqlite3.connect(tmp_path / "resume.db") as connection:
        connection.execute(
            "UPDATE trial_heartbeats SET heartbeat = datetime(heartbeat, '-1 hour') "
            "WHERE trial_id = ?",
            (stale,),
        )
    study = hlpo.resume_study(
        {**resume_args(tmp_path), "study_name": "other"}, backup_study=False, grace_period=60
    )
    assert [t.state for t in study.trials] == [
        TrialState.RUNNING,
        TrialState.FAIL,
        TrialState.WAITING,
    ]
    assert study.trials[2].user_attrs == {hlpo._ORIG_NUMBER_KEY: 1}


def test_optuna_resume_study_carries_reported_values(tmp_path: pathlib.Path) -> None:
    study = optuna.create_study(**resume_args(tmp_path))
    distributions = {"x": optuna.distributions.FloatDistribution(0, 10)}
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.FAIL,
            params={"x": 2.0},
            distributions=distributions,
            intermediate_values={0: 5.0, 1: 4.0},
            system_attrs={"completed_rung_0": 5.0, "other": 1},
        )
    )
    # Its re-run failed too, after reporting one more value.
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.FAIL,
            params={"x": 2.0},
            distributions=distributions,
            intermediate_values={0: 5.0, 1: 4.0, 2: 3.0},
            user_attrs={hlpo._ORIG_NUMBER_KEY: 0},
        )
    )
    del study
    # (Heartbeats off: they are made for study.optimize, and this test asks by hand.)
    study = hlpo.resume_study(resume_args(tmp_path), backup_study=False, heartbeat_interval=None)
    waiting = study.trials[2]
    assert waiting.state == TrialState.WAITING
    assert waiting.intermediate_values == {0: 5.0, 1: 4.0, 2: 3.0}
    assert waiting.system_attrs == {"fixed_params": {"x": 2.0}, "completed_rung_0": 5.0}

    # The re-run trial holds the values once it runs, and reporting a carried step again
    # keeps the first value (as Optuna does) without Optuna's warning.
    trial = study.ask()
    assert trial.number == 2
    plugin, model, _ = make_plugin(trial, {"accuracy": 9.0})
    plugin.on_training_start()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plugin.report_metrics(2)
    model.metrics["accuracy"] = 2.5
    plugin.report_metrics(3)
    assert study.trials[2].intermediate_values == {0: 5.0, 1: 4.0, 2: 3.0, 3: 2.5}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"heartbeat_interval": 0}, "'heartbeat_interval' to be a positive number.*got 0"),
        ({"heartbeat_interval": 1.5}, "'heartbeat_interval' to be a positive number.*got 1.5"),
        ({"grace_period": -1}, "'grace_period' to be a positive number.*got -1"),
        ({"heartbeat_interval": None, "grace_period": 5}, "'grace_period' \\(5\\) needs"),
        ({"heartbeat_interval": 5, "grace_period": 5}, "longer than 'heartbeat_interval'"),
    ],
)
def test_optuna_resume_study_checks_heartbeat_arguments(
    tmp_path: pathlib.Path, kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        hlpo.resume_study(resume_args(tmp_path), **kwargs)
    assert not (tmp_path / "resume.db").exists()


# -- sampler checkpoints ---------------------------------------------------------------------


def test_optuna_restore_sampler_without_checkpoints(tmp_path: pathlib.Path) -> None:
    assert hlpo.restore_sampler(tmp_path / "missing") is None
    (tmp_path / "notes.pkl").touch()
    (tmp_path / "sampler_trial-x.pkl").touch()
    assert hlpo.restore_sampler(tmp_path) is None


def test_optuna_checkpoint_and_restore_sampler(tmp_path: pathlib.Path) -> None:
    root = tmp_path / "samplers"
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0, 1)
        path = hlpo.checkpoint_sampler(trial, root)
        assert path == root / f"sampler_trial-{trial.number}.pkl"
        return x

    study.optimize(objective, n_trials=11)
    assert sorted(p.name for p in root.iterdir()) == sorted(
        f"sampler_trial-{i}.pkl" for i in range(11)
    )

    # The restored sampler continues exactly where the last trial left the original.
    restored = hlpo.restore_sampler(root)
    assert isinstance(restored, optuna.samplers.RandomSampler)
    original_draws = [study.sampler._rng.rng.uniform() for _ in range(3)]  # type: ignore[attr-defined]
    restored_draws = [restored._rng.rng.uniform() for _ in range(3)]
    assert restored_draws == original_draws


# -- OptunaPlugin ----------------------------------------------------------------------------


def test_optuna_plugin_constructor_checks() -> None:
    study = optuna.create_study()
    with pytest.raises(TypeError, match="'trial' to be an optuna Trial, got str"):
        hlpo.OptunaPlugin("trial", "acc")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="'metric_name' to be a non-empty string, got ''"):
        hlpo.OptunaPlugin(study.ask(), "")


def test_optuna_plugin_configure(tmp_path: pathlib.Path) -> None:
    study = make_study(tmp_path)
    trial = study.ask()
    plugin = hlpo.OptunaPlugin(trial, "accuracy")
    assert plugin.plug_id == hlpo.OptunaPlugin.plugin_id == "optuna"
    assert plugin.trial is trial
    assert plugin.metric_name == "accuracy"
    assert plugin.unique_overrides == hlp.UniquePluginOverrides(should_training_stop=True)

    trainer = FakeTrainer()
    plugin.configure_trainer(trainer)  # type: ignore[arg-type]
    assert trainer.plugins == {"optuna": plugin}
    assert trainer.train_exceptions == [optuna.TrialPruned]

    model = MetricModel()
    plugin.configure_model(model)
    plugin.configure_model(model)
    assert model.save_name == "plugin-model_trial-0"


def test_optuna_plugin_configure_model_uses_original_number(tmp_path: pathlib.Path) -> None:
    study = make_study(tmp_path)
    study.ask()
    study.enqueue_trial({}, user_attrs={hlpo._ORIG_NUMBER_KEY: 0})
    trial = study.ask()
    assert trial.number == 1
    model = MetricModel()
    hlpo.OptunaPlugin(trial, "accuracy").configure_model(model)
    assert model.save_name == "plugin-model_trial-0"


def test_optuna_plugin_suggest(tmp_path: pathlib.Path) -> None:
    trial = make_study(tmp_path).ask()
    plugin = hlpo.OptunaPlugin(trial, "accuracy")
    assert plugin.suggest("categorical", "c", choices=[1, 2, 3]) in (1, 2, 3)
    assert 0 <= plugin.suggest("int", "i", low=0, high=5) <= 5
    assert 1e-3 <= plugin.suggest("float", "f", low=1e-3, high=1.0, log=True) <= 1.0
    assert set(trial.params) == {"c", "i", "f"}
    with pytest.raises(
        KeyError,
        match=(
            "unknown suggestion type 'uniform' for parameter 'u'; expected one of "
            "'categorical', 'float', 'int'"
        ),
    ):
        plugin.suggest("uniform", "u", low=0, high=1)


def test_optuna_plugin_setup_distributed_needs_database(tmp_path: pathlib.Path) -> None:
    memory_plugin = hlpo.OptunaPlugin(optuna.create_study().ask(), "accuracy")
    memory_plugin.setup()
    memory_plugin.is_distributed = True
    with pytest.raises(ValueError, match=r"stored in a database .* InMemoryStorage"):
        memory_plugin.setup()

    sqlite_plugin = hlpo.OptunaPlugin(make_study(tmp_path).ask(), "accuracy")
    sqlite_plugin.is_distributed = True
    sqlite_plugin.setup()


def test_optuna_plugin_reports_metrics(tmp_path: pathlib.Path) -> None:
    study = make_study(tmp_path)
    plugin, model, _ = make_plugin(study.ask())

    plugin.report_metrics(0)  # no metric yet: nothing reported
    model.metrics["accuracy"] = torch.tensor(0.25)
    plugin.report_metrics(1)
    model.metrics["accuracy"] = 0.5
    plugin.report_metrics(2)
    assert not plugin.should_training_stop()

    frozen = study.trials[0]
    assert frozen.intermediate_values == {1: 0.25, 2: 0.5}


def test_optuna_plugin_prunes_and_raises_on_training_end(tmp_path: pathlib.Path) -> None:
    study = make_study(tmp_path, pruner=AlwaysPrune())
    plugin, model, _ = make_plugin(study.ask(), {"accuracy": 0.1})
    plugin.on_training_start()

    # No report yet: the pruner is not asked.
    assert not plugin.should_training_stop()
    plugin.report_metrics(3)
    assert plugin.should_training_stop()
    assert plugin.should_training_stop()
    assert study.trials[0].user_attrs == {hlpo._PRUNED_KEY: True, hlpo._CYCLE_KEY: 3}

    with pytest.raises(optuna.TrialPruned, match="Pruned on validation cycle 3"):
        plugin.on_training_end()
    assert model.training_end_calls == 1

    with pytest.raises(optuna.TrialPruned, match="Pruned on validation cycle 3"):
        plugin.check_pruned()

    # A new run with the same plug-in starts clean.
    plugin.on_training_start()
    assert not plugin.should_training_stop()


def test_optuna_plugin_on_training_end_checks_a_pending_report(tmp_path: pathlib.Path) -> None:
    study = make_study(tmp_path, pruner=AlwaysPrune())
    plugin, model, _ = make_plugin(study.ask(), {"accuracy": 0.1})
    plugin.report_metrics(0)
    with pytest.raises(optuna.TrialPruned):
        plugin.on_training_end()
    assert model.training_end_calls == 1


def test_optuna_plugin_not_pruned(tmp_path: pathlib.Path) -> None:
    study = make_study(tmp_path, pruner=optuna.pruners.NopPruner())
    plugin, model, _ = make_plugin(study.ask(), {"accuracy": 0.1})
    plugin.report_metrics(0)
    assert not plugin.should_training_stop()
    plugin.on_training_end()
    plugin.check_pruned()
    assert model.training_end_calls == 0
    assert study.trials[0].user_attrs == {}


@pytest.mark.slow
def test_optuna_plugin_distributed_defers_to_check_pruned(tmp_path: pathlib.Path) -> None:
    study = make_study(tmp_path, pruner=AlwaysPrune())
    plugin, model, _ = make_plugin(study.ask(), {"accuracy": 0.1})
    plugin.is_distributed = True  # no process group: the broadcast is the identity
    plugin.report_metrics(4)
    assert plugin.should_training_stop()
    plugin.on_training_end()  # does not raise when distributed
    assert model.training_end_calls == 0

    # check_pruned reads the trial from storage, as the parent of spawned ranks would.
    fresh = hlpo.OptunaPlugin(
        optuna.Trial(
            optuna.load_study(study_name="unit", storage=storage_url(tmp_path / "unit.db")),
            study.trials[0]._trial_id,
        ),
        "accuracy",
    )
    with pytest.raises(optuna.TrialPruned, match="Pruned on validation cycle 4"):
        fresh.check_pruned()


def test_optuna_plugin_state_dict(tmp_path: pathlib.Path) -> None:
    study = make_study(tmp_path)
    study.ask()
    trial = study.ask()
    plugin = hlpo.OptunaPlugin(trial, "accuracy")
    plugin.suggest("int", "width", low=1, high=1)
    assert plugin.state_dict() == trial.params == {"width": 1}

    plugin.load_state_dict({"width": 1, "later": 3})
    with pytest.raises(
        RuntimeError,
        match=r"written by a trial with different parameters than trial 1 \(width: 2 != 1\)",
    ):
        plugin.load_state_dict({"width": 2})
