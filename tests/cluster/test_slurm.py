"""A helios job under a real SLURM (one node): signals, requeue, cancel.

Every job is the batch script of ``docs/howto/cluster.md``, submitted with the documented
``sbatch`` command, whose ``srun python train.py`` runs ``node_job.py`` (one process). The
scenarios run at the same time (each in its own folder; the node takes several jobs at
once, as they mostly sleep), driven by one fixture; the tests then check each one:

* ``tasks``: ``--time=1 --signal=USR1@55``: SLURM itself sends SIGUSR1 to the tasks ahead of
  the time limit (its periodic check comes up to 30 s late);
* ``shell``: ``scancel --signal=USR1 --batch``, the delivery of ``--signal=B:USR1@...``: only
  the batch script's shell gets the signal, and its trap passes it on;
* ``both``: ``scancel --signal=USR1 --full``: the shell and the tasks get it;
* ``admin``: ``scontrol requeue`` (SIGTERM, then the job is queued again by SLURM);
* ``cancel``: ``scancel`` (SIGTERM then SIGKILL): the job ends; it is submitted again;
* ``notrap``: the short script of the preemption section of ``resume.md`` (no trap) gets
  ``scancel --signal=USR1 --batch``.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import pathlib
import subprocess
import sys
import time
from typing import Any

import cluster_docs
import pytest
import torch

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400), pytest.mark.xdist_group("cluster")]

JOB = pathlib.Path(__file__).with_name("node_job.py")
ITERATIONS = 12
# The wrapper the batch script runs as train.py: node_job.py with the scenario's folders.
_TRAIN_PY = """import runpy, sys
sys.argv = [{job!r}, "out", "chkpt", "--iterations", "{iterations}", "--step-sleep", "{sleep}"]
runpy.run_path({job!r}, run_name="__main__")
"""


@dataclasses.dataclass
class Scenario:
    name: str
    folder: pathlib.Path
    sleep: float
    options: tuple[str, ...] = ()
    job_ids: list[int] = dataclasses.field(default_factory=list)
    signaled_at: int | None = None  # batches done when the test acted
    states: list[dict[str, str]] = dataclasses.field(default_factory=list)

    @property
    def out(self) -> pathlib.Path:
        return self.folder / "out"

    def batches(self) -> list[dict[str, Any]]:
        path = self.out / "batches0_ddp.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]

    def output(self) -> str:
        return "\n".join(
            path.read_text(errors="replace")[-3000:] for path in self.folder.glob("slurm-*.out")
        )


def _submit(slurm: Any, scenario: Scenario) -> None:
    words = cluster_docs.shell_words(cluster_docs.block("sbatch-submit"))
    assert words[0] == "sbatch", words
    script = scenario.folder / words[-1]
    env_path = f"{pathlib.Path(sys.executable).parent}:{os.environ.get('PATH', '')}"
    result = subprocess.run(
        ["sbatch", "--parsable", *scenario.options, *words[1:]],
        cwd=scenario.folder,
        capture_output=True,
        text=True,
        env=slurm.env({"PATH": env_path}),
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr + slurm.logs()
    assert script.exists()
    scenario.job_ids.append(int(result.stdout.strip().split(";")[0]))


def _prepare(root: pathlib.Path, name: str, sleep: float, *options: str) -> Scenario:
    folder = root / name
    (folder / "out").mkdir(parents=True)
    (folder / "train.sbatch").write_text(cluster_docs.block("sbatch-script"))
    (folder / "train.py").write_text(
        _TRAIN_PY.format(job=str(JOB), iterations=ITERATIONS, sleep=sleep)
    )
    return Scenario(name, folder, sleep, options)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("slurm_reference")
    command = [sys.executable, str(JOB), str(out), str(out / "chkpt")]
    command += ["--iterations", str(ITERATIONS)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def scenarios(slurm: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Scenario]:
    """Submit every scenario at once, act on each mid-training, wait until all are done."""
    root = tmp_path_factory.mktemp("slurm_jobs")
    made = {
        # Slow batches: SLURM's signal comes when its periodic check runs (every 30 s).
        "tasks": _prepare(root, "tasks", 3.0, "--time=1", "--signal=USR1@55"),
        "shell": _prepare(root, "shell", 0.4),
        "both": _prepare(root, "both", 0.4),
        "admin": _prepare(root, "admin", 0.4),
        "cancel": _prepare(root, "cancel", 0.4),
        "notrap": _prepare(root, "notrap", 0.4),
    }
    # The script of the preemption section of resume.md: no trap in the shell.
    (root / "notrap" / "train.sbatch").write_text("#!/bin/bash\n" + _resume_page_script())
    for scenario in made.values():
        _submit(slurm, scenario)
    actions = {
        "shell": ["scancel", "--signal=USR1", "--batch"],
        "both": ["scancel", "--signal=USR1", "--full"],
        "admin": ["scontrol", "requeue"],
        "cancel": ["scancel"],
        "notrap": ["scancel", "--signal=USR1", "--batch"],
    }
    deadline = time.monotonic() + 300
    pending = set(made)
    while pending:
        assert time.monotonic() < deadline, {n: made[n].output() for n in pending}
        jobs = slurm.jobs()
        for name in sorted(pending):
            scenario = made[name]
            job_id = scenario.job_ids[-1]
            job = jobs.get(job_id, {})
            state = job.get("JobState", "")
            done = len(scenario.batches())
            if name in actions and scenario.signaled_at is None and done >= 3:
                scenario.signaled_at = done
                slurm.client(*actions[name], str(job_id))
            if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"):
                scenario.states.append(job)
                if name == "cancel" and len(scenario.job_ids) == 1 and state == "CANCELLED":
                    _submit(slurm, scenario)  # the user submits the job again
                else:
                    pending.discard(name)
        time.sleep(0.3)
    return made


def _resume_page_script() -> str:
    text = (cluster_docs.PAGE.parent / "resume.md").read_text()
    start = text.index("```bash\n#SBATCH --requeue") + len("```bash\n")
    return text[start : text.index("```", start)]


def _assert_resumed_exactly(scenario: Scenario, reference: pathlib.Path) -> None:
    final = torch.load(scenario.out / "final_ddp.pt", weights_only=True)
    expected = torch.load(reference / "final_ddp.pt", weights_only=True)
    for key in expected:
        assert torch.equal(final[key], expected[key]), f"{scenario.name}: {key} differs"
    records = scenario.batches()
    pids = [r["pid"] for r in records]
    runs = [[r for r in records if r["pid"] == pid] for pid in dict.fromkeys(pids)]
    # A signal that lands after the last batch requeues a run that finds nothing to train.
    assert 2 <= len(runs) <= int(scenario.states[-1]["Restarts"]) + 1, scenario.output()
    for before, after in itertools.pairwise(runs):
        # Each run started right after the last batch of the one before: none lost or redone.
        assert after[0]["iteration"] == before[-1]["iteration"] + 1, scenario.output()
    strip = [{k: v for k, v in r.items() if k not in ("pid", "host")} for r in records]
    reference_records = [
        {k: v for k, v in json.loads(line).items() if k not in ("pid", "host")}
        for line in (reference / "batches0_ddp.jsonl").read_text().splitlines()
    ]
    assert strip == reference_records


@pytest.mark.parametrize("name", ["tasks", "shell", "both"])
def test_sigusr1_saves_requeues_and_resumes_bit_for_bit(
    scenarios: dict[str, Scenario], reference: pathlib.Path, name: str
) -> None:
    scenario = scenarios[name]
    (job,) = scenario.states
    assert job["JobState"] == "COMPLETED", scenario.output()
    # The tasks scenario may get the signal again in its second run (60 s limit again).
    assert job["Restarts"] == "1" or name == "tasks", scenario.output()
    assert "PREEMPTED SIGUSR1 138" in scenario.output()
    _assert_resumed_exactly(scenario, reference)
    if name != "tasks":
        # It stopped at the next batch after the signal (give the signal 2 batches to land).
        stopped = max(
            r["iteration"] for r in scenario.batches() if r["pid"] == _first_pid(scenario)
        )
        assert scenario.signaled_at is not None
        assert stopped <= scenario.signaled_at + 2


def test_scontrol_requeue_saves_and_resumes_bit_for_bit(
    scenarios: dict[str, Scenario], reference: pathlib.Path
) -> None:
    scenario = scenarios["admin"]
    (job,) = scenario.states
    assert job["JobState"] == "COMPLETED", scenario.output()
    assert job["Restarts"] == "1", scenario.output()
    assert "PREEMPTED SIGTERM 143" in scenario.output()
    _assert_resumed_exactly(scenario, reference)


def test_scancel_loses_at_most_one_batch(
    scenarios: dict[str, Scenario], reference: pathlib.Path
) -> None:
    scenario = scenarios["cancel"]
    cancelled, again = scenario.states
    assert cancelled["JobState"] == "CANCELLED", scenario.output()
    assert again["JobState"] == "COMPLETED", scenario.output()
    records = scenario.batches()
    first = [r for r in records if r["pid"] == _first_pid(scenario)]
    resumed_at = next(r["iteration"] for r in records if r["pid"] != _first_pid(scenario))
    assert resumed_at >= first[-1]["iteration"]  # at most the batch in progress is re-done
    final = torch.load(scenario.out / "final_ddp.pt", weights_only=True)
    expected = torch.load(reference / "final_ddp.pt", weights_only=True)
    assert all(torch.equal(final[key], expected[key]) for key in expected)


def test_without_a_trap_a_signal_for_the_shell_ends_the_job_unqueued(
    scenarios: dict[str, Scenario],
) -> None:
    # Why the documented script traps: SLURM's B: delivery kills a shell without a trap
    # before it can requeue. SLURM then ends the job's step with SIGTERM, so the training
    # saves, but the job ends FAILED and nobody queues it again.
    scenario = scenarios["notrap"]
    (job,) = scenario.states
    assert job["JobState"] == "FAILED", scenario.output()
    assert job["Restarts"] == "0", scenario.output()
    assert "PREEMPTED SIGTERM 143" in scenario.output()
    assert not (scenario.out / "final_ddp.pt").exists()


def _first_pid(scenario: Scenario) -> int:
    pid: int = scenario.batches()[0]["pid"]
    return pid
