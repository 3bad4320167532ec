"""helios verify-resume: passes on the digits config, names the divergence of a model that
keeps state outside its checkpoint."""

from __future__ import annotations

import json
import pathlib
import re
import signal

import pytest
from cli_support import EXAMPLES, mlp_config, run_helios

from helios.cli.fingerprint import Interruption
from helios.cli.verify import first_difference, first_divergence, make_plan

pytestmark = pytest.mark.slow


def test_the_plan_sends_kills_and_one_sigterm_at_distinct_steps() -> None:
    import random

    plan = make_plan(50, 3, random.Random(1))
    assert len(plan.targets) == 4 and len(set(plan.targets)) == 4
    assert plan.targets == sorted(plan.targets) and plan.targets[0] >= 1 and plan.targets[-1] < 50
    assert sorted(plan.signals) == sorted([signal.SIGKILL] * 3 + [signal.SIGTERM])
    assert make_plan(3, 5, random.Random(0)).targets == [1, 2]
    # A SIGTERM in the last step would not interrupt the run: it goes before another signal.
    for seed in range(40):
        plan = make_plan(4, 2, random.Random(seed))
        assert plan.targets == [1, 2, 3] and plan.signals[-1] == signal.SIGKILL


def test_an_interruption_reads_and_writes_its_command_line_form() -> None:
    plan = Interruption.parse("SIGKILL:7:0.25")
    assert plan == Interruption(signal.SIGKILL, 7, 0.25)
    assert Interruption.parse(str(plan)) == plan
    for bad in ("SIGINT:7:0.5", "SIGKILL:7", "SIGTERM:x:0.5", "SIGTERM:3:1.5", "SIGTERM:-1:0"):
        with pytest.raises(ValueError):
            Interruption.parse(bad)


def test_the_first_divergence_names_the_step_the_loss_and_the_tensor() -> None:
    def step(n: int, loss: str, weight: str) -> dict:
        return {"step": n, "epoch": 1, "iteration": n, "losses": {"loss": loss},
                "tensors": {"net.bias": "1", "net.weight": weight}}  # fmt: skip

    a = {1: step(1, "0x1p+0", "5"), 2: step(2, "0x1p-1", "6"), 3: step(3, "0x1p-2", "7")}
    b = {1: step(1, "0x1p+0", "5"), 2: step(2, "0x1p-1", "9"), 3: step(3, "0x1p-3", "8")}
    found = first_divergence(a, b)
    assert found is not None
    assert (found.step, found.loss, found.tensor) == (2, None, "net.weight")
    assert first_divergence(a, dict(a)) is None
    assert first_difference({"a": [1, {"b": 2.0}]}, {"a": [1, {"b": 2.5}]}) == "a.1.b"


def test_verify_resume_passes_on_the_digits_config(tmp_path: pathlib.Path) -> None:
    result = run_helios(
        "verify-resume", EXAMPLES / "digits_config.yaml", "--kills", "1", "--steps", "36",
        "--trainer.train_unit=iteration", "--trainer.valid_frequency=12",
        "--trainer.chkpt_frequency=12",
        "--workdir", tmp_path / "work", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "uninterrupted: 36 steps" in result.stdout
    assert len(re.findall(r"interrupted: SIGKILL at step \d+", result.stdout)) == 1
    assert len(re.findall(r"interrupted: SIGTERM at step \d+ .*exit 143", result.stdout)) == 1
    _assert_signals_landed_as_planned(result.stdout, tmp_path / "work" / "interrupted")
    assert "IDENTICAL" in result.stdout


def _assert_signals_landed_as_planned(report: str, run: pathlib.Path) -> None:
    """Each process sent its signal after the planned step ended, before the next one did.

    The process signals itself (no parent polling), so however loaded the machine is, the
    last step a process fingerprinted is the planned one or the one after it.
    """
    landed = re.findall(r"interrupted: (SIG\w+) at step (\d+) \(planned after (\d+)\)", report)
    assert landed, report
    events = [
        json.loads(line)
        for line in (run / "fingerprints.jsonl").read_text().splitlines()
        if line.startswith('{"event": "signal"')
    ]
    assert [e["signal"] for e in events] == [name for name, _, _ in landed]
    for (_, step, planned), event in zip(landed, events, strict=True):
        assert int(planned) <= event["after_step"] <= int(planned) + 1, (report, events)
        assert int(step) in (int(planned), int(planned) + 1), report


def test_verify_resume_names_where_a_non_resumable_model_diverges(tmp_path: pathlib.Path) -> None:
    config = mlp_config(tmp_path, model="LeakyCounter", total_steps=30, chkpt_frequency=5)
    # The SIGTERM alone (no SIGKILL: the digits test above sends both) shows the divergence.
    result = run_helios(
        "verify-resume", config, "--kills", "0", "--seed", "3", "--workdir", tmp_path / "work",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert "DIFFERENT" in result.stdout
    first = re.search(
        r"interrupted: SIGTERM at step (\d+) \(planned after 8\), exit 143", result.stdout
    )
    assert first is not None, result.stdout
    stop = int(first.group(1))
    _assert_signals_landed_as_planned(result.stdout, tmp_path / "work" / "interrupted")
    found = re.search(
        r"the runs diverge at step (\d+) \(epoch 1, iteration \d+\): loss 'loss': .* "
        r"\(uninterrupted\) vs .* \(interrupted\); first tensor that differs: _net\.0\.weight",
        result.stdout,
    )
    assert found is not None, result.stdout
    # The counter restarts with the resumed process, from the checkpoint written at the stop.
    assert int(found.group(1)) == stop + 1
    assert "final checkpoints: first difference in model._net.0.weight" in result.stdout
