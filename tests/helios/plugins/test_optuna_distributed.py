"""Distributed pruning through the OptunaPlugin: 2 gloo processes under torchrun, SQLite."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import optuna
import pytest
from optuna.trial import TrialState

from helios.plugins import optuna as hlpo

pytestmark = pytest.mark.slow

JOB = pathlib.Path(__file__).with_name("optuna_dist_job.py")


@pytest.mark.timeout(300)
def test_optuna_distributed_pruning_under_torchrun(tmp_path: pathlib.Path) -> None:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(JOB),
        str(tmp_path),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    study = optuna.load_study(study_name="dist", storage=f"sqlite:///{tmp_path / 'study.db'}")
    pruned, complete = study.trials

    for trials in ranks:
        first, second = trials
        assert first["is_distributed"] and second["is_distributed"]
        # Both ranks stop after the second validation cycle and see the pruning afterwards.
        assert first["fit_ok"]
        assert first["epochs"] == [1, 2]
        assert first["pruned"] == "Pruned on validation cycle 1"
        assert second["epochs"] == [1, 2, 3, 4]
        assert second["pruned"] is None
        # Rank 0 suggested the parameter; rank 1 got the same value.
        assert first["lr"] == pruned.params["lr"]
        assert second["lr"] == complete.params["lr"]

    assert pruned.state == TrialState.PRUNED
    assert pruned.user_attrs == {hlpo._PRUNED_KEY: True, hlpo._CYCLE_KEY: 1}
    # Only rank 0 reports, once per validation cycle.
    assert sorted(pruned.intermediate_values) == [0, 1]
    assert complete.state == TrialState.COMPLETE
    assert sorted(complete.intermediate_values) == [0, 1, 2, 3]
    assert complete.value == complete.intermediate_values[3]
    assert complete.user_attrs == {}
