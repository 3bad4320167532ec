"""One Optuna study on a real PostgreSQL server, its workers on two simulated hosts.

Each worker is ``study_worker.py`` under ``torchrun`` (2 processes: every trial trains
distributed), opening the study with the ``open_study`` of ``docs/howto/cluster.md``. The
trials are queued beforehand with fixed parameters, so that a trial's results depend on
its parameters only; the reference is the same study run by one worker on an SQLite file.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import subprocess
import sys
import time
from typing import Any

import cluster_docs
import optuna
import pytest
from optuna.trial import TrialState

from helios.plugins import optuna as hlpo

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300), pytest.mark.xdist_group("cluster")]

WORKER = pathlib.Path(__file__).with_name("study_worker.py")
LEARNING_RATES = [0.01, 0.05, 0.002, 0.03]


def _study_module(folder: pathlib.Path) -> Any:
    """Write the documented study module into ``folder`` and import it."""
    path = folder / "study.py"
    path.write_text(cluster_docs.block("study"))
    spec = importlib.util.spec_from_file_location("documented_study", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _queue_trials(module: Any, url: str) -> None:
    study = module.open_study(url, heartbeat_interval=1, grace_period=3)
    for lr in LEARNING_RATES:
        study.enqueue_trial({"lr": lr})


def _worker_command(folder: pathlib.Path, url: str, chkpt: pathlib.Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        str(WORKER),
        str(folder / "study.py"),
        url,
        str(chkpt),
    ]


def _results(study: optuna.Study) -> dict[int, tuple[dict[str, Any], dict[int, float], float]]:
    """Each finished trial's parameters, reported values and value, by trial identity."""
    return {
        hlpo._trial_identity(t): (t.params, t.intermediate_values, t.value)
        for t in study.get_trials(states=(TrialState.COMPLETE,))
    }


@pytest.fixture(scope="module")
def serial(tmp_path_factory: pytest.TempPathFactory) -> optuna.Study:
    """The study run by one worker on an SQLite file (the path that must keep working)."""
    folder = tmp_path_factory.mktemp("serial_study")
    url = f"sqlite:///{folder / 'study.db'}"
    _queue_trials(_study_module(folder), url)
    result = subprocess.run(
        _worker_command(folder, url, folder / "chkpt"),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return optuna.load_study(study_name="digits", storage=url)


def test_workers_on_two_hosts_share_a_study_and_finish_a_dead_workers_trial(
    hosts: Any, postgres: Any, serial: optuna.Study
) -> None:
    folder = hosts.shared / "study"
    folder.mkdir()
    chkpt = folder / "chkpt"
    chkpt.mkdir()
    url = postgres.create_database("studies")
    _queue_trials(_study_module(folder), url)
    on_nodes = postgres.url("studies", host=hosts.root_address)
    env = {**os.environ, "STUDY_EPOCH_SECONDS": "0.5"}
    logs = [folder / f"worker{node}.log" for node in range(2)]
    workers = [
        hosts.popen(node, _worker_command(folder, on_nodes, chkpt), logs[node], env=env)
        for node in range(2)
    ]

    def output() -> str:
        return "\n".join(log.read_text(errors="replace")[-3000:] for log in logs)

    # Node 1 dies in the middle of its first trial, while node 0 trains another one.
    marker = chkpt / f"running-{hosts.hostname(1)}"
    deadline = time.monotonic() + 120
    while True:
        assert all(w.poll() is None for w in workers), output()
        assert time.monotonic() < deadline, output()
        if marker.exists():
            study = optuna.load_study(study_name="digits", storage=url)
            killed = study.trials[int(marker.read_text())]
            running = study.get_trials(states=(TrialState.RUNNING,))
            if killed.intermediate_values and len(running) == 2:
                break
        time.sleep(0.1)
    hosts.kill_node(1)
    assert workers[0].wait(timeout=150) == 0, output()

    study = optuna.load_study(study_name="digits", storage=url)
    states = {t.number: t.state for t in study.trials}
    assert states[killed.number] == TrialState.FAIL
    (rerun,) = [t for t in study.trials if t.user_attrs.get(hlpo._ORIG_NUMBER_KEY) == killed.number]
    assert rerun.state == TrialState.COMPLETE
    assert rerun.params == killed.params
    # The killed trial's values survived, and the re-run resumed its checkpoints: every
    # trial reported what the serial study's did, bit for bit.
    assert set(killed.intermediate_values.items()) <= set(rerun.intermediate_values.items())
    assert _results(study) == _results(serial)
    assert len(_results(study)) == len(LEARNING_RATES)
    assert study.best_trial.params == serial.best_trial.params
    assert study.best_value == serial.best_value
    # Each worker backed the study up before changing it, in the same database.
    names = {s.study_name for s in optuna.get_all_study_summaries(storage=url)}
    assert {"digits_bkp-0", "digits_bkp-1"} <= names
