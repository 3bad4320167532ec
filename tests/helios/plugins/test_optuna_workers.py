"""Several real worker processes on one SQLite study, through helios.plugins.optuna.

The workers are ``optuna_worker.py`` processes: one joins a study while another trains a
trial, one kills itself (SIGKILL) in the middle of a trial that a later worker resumes, and
several create the same new database at the same moment.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time
from typing import Any

import optuna
import pytest
import sqlalchemy.exc
from optuna.trial import TrialState

from helios.plugins import optuna as hlpo

pytestmark = pytest.mark.slow

WORKER = pathlib.Path(__file__).with_name("optuna_worker.py")
SRC = pathlib.Path(__file__).resolve().parents[3] / "src"


def start_worker(*args: Any, env_vars: dict[str, str] | None = None) -> subprocess.Popen[str]:
    env = {
        **(env_vars or {}),
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.Popen(
        [sys.executable, str(WORKER), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def finish(worker: subprocess.Popen[str], timeout: float = 120) -> tuple[int, str]:
    out, _ = worker.communicate(timeout=timeout)
    return worker.returncode, out


def load(root: pathlib.Path) -> optuna.Study:
    return optuna.load_study(study_name="study", storage=f"sqlite:///{root / 'study.db'}")


def wait_for_report(root: pathlib.Path, worker: subprocess.Popen[str], timeout: float) -> None:
    """Wait until a trial of the study has reported its first value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert worker.poll() is None, finish(worker)[1][-3000:]
        if (root / "study.db").exists():
            try:
                trials = load(root).trials
            except (
                KeyError,
                optuna.exceptions.StorageInternalError,
                sqlalchemy.exc.SQLAlchemyError,
            ):
                # The worker may still be creating the database (Optuna's schema race).
                trials = []
            if any(t.intermediate_values for t in trials):
                return
        time.sleep(0.2)
    raise AssertionError("the worker reported nothing in time")


def summary(study: optuna.Study) -> list[tuple[TrialState, dict[int, float], int]]:
    return [
        (t.state, t.intermediate_values, hlpo._trial_identity(t))
        for t in study.trials
        if t.state != TrialState.FAIL
    ]


@pytest.mark.timeout(240)
def test_a_second_worker_leaves_a_live_trial_alone(tmp_path: pathlib.Path) -> None:
    # The first worker's trial waits at the start of its last epoch until another worker has
    # joined (with a fixed pace instead, a loaded machine let the trial end first).
    first = start_worker("train", tmp_path, 1, env_vars={"OPTUNA_WORKER_HOLD_LAST_EPOCH": "1"})
    # The second worker starts now (importing torch takes a while) and opens the study
    # once the first one's trial has reported its first value.
    go = tmp_path / "go"
    second = start_worker("train", tmp_path, 1, env_vars={"OPTUNA_WORKER_GO_FILE": str(go)})
    wait_for_report(tmp_path, first, timeout=120)
    running = load(tmp_path).trials
    go.touch()
    # Joins while trial 0 trains; with RUNNING in failed_states it used to fail and re-queue
    # trial 0, and the first worker died on UpdateFinishedTrialError.
    code, out = finish(first)
    assert code == 0, out[-3000:]
    code, out = finish(second)
    assert code == 0, out[-3000:]

    assert [t.state for t in running] == [TrialState.RUNNING]
    # The second worker joined while trial 0 was running, and left it running.
    assert json.loads((tmp_path / f"joined-{second.pid}.json").read_text()) == ["RUNNING"]
    trials = load(tmp_path).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE]
    assert all(hlpo._ORIG_NUMBER_KEY not in t.user_attrs for t in trials)
    assert sorted(trials[0].intermediate_values) == [0, 1, 2, 3]
    assert sorted(p.name for p in (tmp_path / "chkpt").iterdir()) == [
        "worker_trial-0",
        "worker_trial-1",
    ]


@pytest.mark.timeout(300)
def test_a_killed_trial_is_resumed_and_prunes_as_if_never_stopped(tmp_path: pathlib.Path) -> None:
    straight = tmp_path / "straight"
    killed = tmp_path / "killed"

    code, out = finish(start_worker("train", straight, 2))
    assert code == 0, out[-3000:]

    # Trial 1 kills itself at the start of epoch 3: cycles 0 and 1 are reported, the
    # checkpoint of epoch 2 is written, and the trial stays RUNNING with its last heartbeat.
    code, out = finish(start_worker("train", killed, 2, 1, 3))
    assert code == -9, out[-3000:]
    trials = load(killed).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.RUNNING]
    assert sorted(trials[1].intermediate_values) == [0, 1]

    # Once its heartbeat is older than the grace period (3 s), a new worker re-queues it.
    time.sleep(4)
    code, out = finish(start_worker("train", killed, 1))
    assert code == 0, out[-3000:]

    study = load(killed)
    assert [t.state for t in study.trials] == [
        TrialState.COMPLETE,
        TrialState.FAIL,
        TrialState.COMPLETE,
    ]
    rerun = study.trials[2]
    assert rerun.user_attrs == {hlpo._ORIG_NUMBER_KEY: 1}
    assert rerun.params == study.trials[1].params
    # The re-run resumed the killed trial's checkpoint and saw its reported values, so the
    # pruner decided as in the study that was never interrupted.
    assert summary(study) == summary(load(straight))
    assert sorted(p.name for p in (killed / "chkpt").iterdir()) == [
        "worker_trial-0",
        "worker_trial-1",
    ]


@pytest.mark.timeout(240)
def test_workers_creating_one_new_database_at_once(tmp_path: pathlib.Path) -> None:
    rounds, gap, workers = 4, 1.5, 4
    # Every worker imports torch and helios first; start the first round once all can be
    # ready.
    start = time.time() + 15
    procs = [start_worker("open", tmp_path, start, rounds, gap) for _ in range(workers)]
    results = [finish(p, timeout=200) for p in procs]
    for code, out in results:
        assert code == 0, out[-3000:]
    for r in range(rounds):
        study = optuna.load_study(
            study_name="race", storage=f"sqlite:///{tmp_path / f'race-{r}.db'}"
        )
        assert [t.state for t in study.trials] == [TrialState.COMPLETE] * workers


@pytest.mark.timeout(240)
def test_a_worker_requeues_a_trial_that_died_while_it_optimized(tmp_path: pathlib.Path) -> None:
    paced = {"OPTUNA_WORKER_EPOCH_SECONDS": "1.5"}
    # The first worker's trial 0 kills itself at the start of epoch 3 (about 3 s in).
    first = start_worker("train", tmp_path, 1, 0, 3, env_vars=paced)
    go = tmp_path / "go"
    second = start_worker(
        "train", tmp_path, 2, env_vars={**paced, "OPTUNA_WORKER_GO_FILE": str(go)}
    )
    wait_for_report(tmp_path, first, timeout=120)
    go.touch()
    code, out = finish(first)
    assert code == -9, out[-3000:]
    # The second worker joined while trial 0 was alive and left it alone; when it starts its
    # next trial (6 s later), trial 0's heartbeat is stale: Optuna fails it and helios queues
    # it again, and the second worker resumes it.
    code, out = finish(second)
    assert code == 0, out[-3000:]

    trials = load(tmp_path).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    rerun = trials[2]
    assert rerun.user_attrs == {hlpo._ORIG_NUMBER_KEY: 0}
    assert rerun.params == trials[0].params
    assert rerun.intermediate_values == {0: 5.0, 1: 4.0, 2: 3.0, 3: 2.0}
    assert sorted(p.name for p in (tmp_path / "chkpt").iterdir()) == [
        "worker_trial-0",
        "worker_trial-1",
    ]
