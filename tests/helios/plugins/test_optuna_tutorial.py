"""The Optuna tutorial runs, and a second run resumes the study where the first stopped."""

from __future__ import annotations

import importlib.util
import pathlib
import types
from collections.abc import Iterator

import optuna
import pytest
import torch
from optuna.trial import TrialState

pytestmark = pytest.mark.slow

EXAMPLE = pathlib.Path(__file__).resolve().parents[3] / "examples" / "optuna_tutorial.py"


@pytest.fixture(autouse=True)
def keep_torch_threads() -> Iterator[None]:
    """The tutorial sets torch's thread count for its own process; restore it."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def load_tutorial() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("optuna_tutorial_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(240)
def test_optuna_tutorial_runs_and_resumes(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tutorial = load_tutorial()
    root = tmp_path / "run"

    assert tutorial.main(["--root", str(root), "--trials", "2", "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "Trial 0 finished with" in out
    assert "Best trial:" in out
    assert (root / "samplers" / "sampler_trial-1.pkl").exists()

    assert tutorial.main(["--root", str(root), "--trials", "3", "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "Resuming the study: 2 trials finished, 0 queued again" in out

    study = optuna.load_study(study_name="digits-tuning", storage=f"sqlite:///{root / 'study.db'}")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    assert all(0 <= t.value <= 100 for t in study.trials)  # type: ignore[operator]
    assert sorted(p.name for p in (root / "chkpt").iterdir()) == [
        f"classifier_trial-{i}" for i in range(3)
    ]


def test_optuna_tutorial_rejects_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    tutorial = load_tutorial()
    with pytest.raises(SystemExit):
        tutorial.main(["--trials", "0"])
    assert "--trials must be >= 1, but received 0" in capsys.readouterr().err
