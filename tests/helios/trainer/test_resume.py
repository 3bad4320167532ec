"""Exact resume: a run interrupted anywhere and resumed equals the uninterrupted run.

The subprocess tests start ``resume_job.py`` (next to this file) and SIGKILL it at random
moments (while it starts, mid-step, mid-save) or on purpose in the middle of a save, start
it again from the newest checkpoint, and finally complete the run in this process. They
compare with an uninterrupted run: the final weights must be bit-identical, every batch
re-done after a kill must equal the one done before it (same sample ids, same random
draws, same loss), the batches, with the re-done ones counted once, must equal the
uninterrupted sequence, and every restart must begin with the batch after its newest
checkpoint. The jobs are started together and wait for a go file, so their (slow) imports
overlap. The in-process tests raise an exception inside a chosen step instead, which
reaches every position cheaply.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import resume_job as job
import torch

import helios.trainer as hlt

JOB_PATH = pathlib.Path(__file__).with_name("resume_job.py")
REPO_ROOT = pathlib.Path(__file__).resolve().parents[3]

# unit, total_steps, accumulation_steps. With 10 samples in batches of 4 an epoch has 3
# batches (the last one of 2), so both configurations consume 18 batches over 6 epochs.
CONFIGS = {
    "iteration": ("iteration", 9, 2),
    "epoch": ("epoch", 6, 1),
}
STEP_SLEEP = 0.025
SAVE_SLEEP = 0.01


@dataclasses.dataclass
class Reference:
    weights: dict[str, torch.Tensor]
    batches: list[dict[str, Any]]


def _without_pid(record: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in record.items() if key != "pid"}


def _run_in_process(
    workdir: pathlib.Path,
    config: str,
    crash_at: int | None = None,
    total: int | None = None,
    **trainer_args: Any,
) -> tuple[bool, Any, Any]:
    unit, total_steps, accumulation = CONFIGS[config]
    model = job.ResumeModel(accumulation=accumulation, crash_at=crash_at)
    datamodule = job.ResumeDataModule()
    trainer = job.make_trainer(workdir, unit, total or total_steps, accumulation, **trainer_args)
    return trainer.fit(model, datamodule), model, datamodule


@pytest.fixture(scope="module")
def references(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Reference]:
    found = {}
    for config in CONFIGS:
        ok, model, _ = _run_in_process(tmp_path_factory.mktemp(f"reference-{config}"), config)
        assert ok
        weights = {key: value.clone() for key, value in model.net.state_dict().items()}
        found[config] = Reference(weights, [_without_pid(r) for r in model.records])
    return found


def test_reference_runs_cover_epoch_ends_and_partial_batches(
    references: dict[str, Reference],
) -> None:
    for reference in references.values():
        batches = reference.batches
        assert [b["gi"] for b in batches] == list(range(1, 19))
        assert [b["epoch"] for b in batches] == [e for e in range(1, 7) for _ in range(3)]
        assert [len(b["ids"]) for b in batches] == [4, 4, 2] * 6
        for epoch in range(6):
            ids = [i for b in batches[3 * epoch : 3 * epoch + 3] for i in b["ids"]]
            assert sorted(ids) == list(range(10))
        # Shuffled: the epochs do not all share one order.
        orders = {tuple(i for b in batches[3 * e : 3 * e + 3] for i in b["ids"]) for e in range(6)}
        assert len(orders) == 6


def _assert_weights_equal(weights: dict[str, torch.Tensor], reference: Reference) -> None:
    assert weights.keys() == reference.weights.keys()
    for key, value in weights.items():
        assert torch.equal(value, reference.weights[key]), f"weights differ in {key}"


def _assert_same_batches(records: list[dict[str, Any]], reference: Reference) -> None:
    """Re-done batches must repeat the originals; counted once they equal the reference."""
    by_iteration: dict[int, dict[str, Any]] = {}
    for record in map(_without_pid, records):
        earlier = by_iteration.setdefault(record["gi"], record)
        assert earlier == record, f"batch {record['gi']} was re-done differently"
    assert [by_iteration[gi] for gi in sorted(by_iteration)] == reference.batches


# -- in process: an exception inside a chosen step -------------------------------------------


@pytest.mark.parametrize(
    ("config", "crash_at"),
    [
        ("iteration", 1),  # before the first checkpoint
        ("iteration", 3),  # last batch of epoch 1, inside iteration 2
        ("iteration", 4),  # iteration 2 spans epochs 1 and 2
        ("iteration", 7),  # the checkpoint before was written at the end of epoch 2
        ("iteration", 14),
        ("iteration", 18),  # the very last batch
        ("epoch", 1),
        ("epoch", 4),  # first batch after the first epoch checkpoint
        ("epoch", 9),
        ("epoch", 17),
    ],
)
def test_crash_inside_a_step_then_resume_is_exact(
    config: str, crash_at: int, references: dict[str, Reference], tmp_path: pathlib.Path
) -> None:
    crashed, first, _ = _run_in_process(tmp_path, config, crash_at=crash_at)
    assert crashed is False
    assert first.records[-1]["gi"] == crash_at

    resumed, second, datamodule = _run_in_process(tmp_path, config)
    assert resumed is True
    _assert_weights_equal(second.net.state_dict(), references[config])
    _assert_same_batches(first.records + second.records, references[config])

    # The resumed run re-does the batches after the last checkpoint, not the whole epoch:
    # it starts at the saved position and reads only the samples of the batches it trains.
    start = second.records[0]["gi"]
    unit, _, accumulation = CONFIGS[config]
    batches_per_checkpoint = accumulation if unit == "iteration" else 3
    assert (start - 1) % batches_per_checkpoint == 0
    assert crash_at - batches_per_checkpoint < start <= crash_at
    read = [i for record in second.records for i in record["ids"]]
    assert datamodule.train_dataset.accessed == read


@pytest.mark.parametrize(("config", "first_total"), [("iteration", 4), ("epoch", 2)])
def test_a_finished_run_extended_to_more_steps_equals_the_longer_run(
    config: str, first_total: int, references: dict[str, Reference], tmp_path: pathlib.Path
) -> None:
    ok, first, _ = _run_in_process(tmp_path, config, total=first_total)
    assert ok
    ok, second, _ = _run_in_process(tmp_path, config)
    assert ok
    _assert_weights_equal(second.net.state_dict(), references[config])
    _assert_same_batches(first.records + second.records, references[config])
    assert second.records[0]["gi"] == first.records[-1]["gi"] + 1


def test_resuming_a_finished_run_trains_nothing(
    references: dict[str, Reference], tmp_path: pathlib.Path
) -> None:
    ok, _, _ = _run_in_process(tmp_path, "iteration")
    assert ok
    ok, again, _ = _run_in_process(tmp_path, "iteration")
    assert ok
    assert again.records == []
    _assert_weights_equal(again.net.state_dict(), references["iteration"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("config", list(CONFIGS))
def test_crash_then_resume_on_cuda_is_exact(config: str, tmp_path: pathlib.Path) -> None:
    # Dropout and randn_like draw from the CUDA generator here.
    ok, uninterrupted, _ = _run_in_process(tmp_path / "reference", config, use_cpu=False)
    assert ok
    crashed, first, _ = _run_in_process(tmp_path, config, crash_at=8, use_cpu=False)
    assert crashed is False
    resumed, second, _ = _run_in_process(tmp_path, config, use_cpu=False)
    assert resumed
    reference = Reference(
        {key: value.clone() for key, value in uninterrupted.net.state_dict().items()},
        [_without_pid(r) for r in uninterrupted.records],
    )
    assert second.net[0].weight.is_cuda
    _assert_weights_equal(second.net.state_dict(), reference)
    _assert_same_batches(first.records + second.records, reference)


# -- subprocesses killed with SIGKILL --------------------------------------------------------


@dataclasses.dataclass
class Job:
    """A started ``resume_job.py`` that waits for its go file before it trains."""

    process: subprocess.Popen[bytes]
    go_file: pathlib.Path

    def go(self) -> None:
        self.go_file.touch()


@pytest.fixture
def start_jobs(tmp_path: pathlib.Path) -> Iterator[Callable[[str, list[list[str]]], list[Job]]]:
    """Start jobs all at once (their imports overlap); each trains when told to go."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(config: str, options: list[list[str]]) -> list[Job]:
        unit, total_steps, accumulation = CONFIGS[config]
        # Unbuffered, so the output of a killed job is kept.
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        jobs = []
        for number, extra in enumerate(options):
            go_file = tmp_path / f"go_{number}"
            command = [sys.executable, str(JOB_PATH), str(tmp_path), unit, str(total_steps)]
            command += [str(accumulation), "--go", str(go_file), *extra]
            with open(tmp_path / f"launch_{number}.out", "wb") as output:
                process = subprocess.Popen(
                    command, cwd=REPO_ROOT, env=env, stdout=output, stderr=subprocess.STDOUT
                )
            processes.append(process)
            jobs.append(Job(process, go_file))
        return jobs

    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()


def _output(workdir: pathlib.Path) -> str:
    return "\n".join(p.read_text() for p in sorted(workdir.glob("launch_*.out")))


def _wait_until(ready: Any, what: str, workdir: pathlib.Path, process: Any) -> None:
    deadline = time.monotonic() + 120
    while not ready():
        if process.poll() is not None:
            pytest.fail(f"the job ended before {what}:\n{_output(workdir)}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.002)


def _records(workdir: pathlib.Path) -> list[dict[str, Any]]:
    path = workdir / "batches.jsonl"
    text = path.read_text() if path.exists() else ""
    # Drop what follows the last newline: a line a running job may be writing right now.
    return [json.loads(line) for line in text.split("\n")[:-1]]


def _saved_batches(workdir: pathlib.Path) -> int:
    """Batches consumed at the newest checkpoint, which must always be loadable."""
    newest = hlt.find_last_checkpoint(job.checkpoint_dir(workdir))
    if newest is None:
        return 0
    hlt.register_trainer_types_for_safe_load()
    return int(torch.load(newest, weights_only=True)["training_state"].global_iteration)


def _finish_in_process(
    workdir: pathlib.Path, config: str, reference: Reference, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str]:
    """Complete the killed run in this process and check it against the reference.

    Returns:
        The first global iteration the completing run trained, and what it printed.
    """
    _, total_steps, accumulation = CONFIGS[config]
    model = job.ResumeModel(accumulation=accumulation, record_path=workdir / "batches.jsonl")
    capsys.readouterr()
    trainer = job.make_trainer(workdir, CONFIGS[config][0], total_steps, accumulation)
    assert trainer.fit(model, job.ResumeDataModule())
    _assert_weights_equal(model.net.state_dict(), reference)
    _assert_same_batches(_records(workdir), reference)
    return model.records[0]["gi"], capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("config", list(CONFIGS))
def test_sigkill_at_random_moments_then_resume_is_exact(
    config: str,
    references: dict[str, Reference],
    tmp_path: pathlib.Path,
    start_jobs: Callable[[str, list[list[str]]], list[Job]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The first and last kills wait until the job has trained a random number of batches,
    # then a random fraction of a step (25 ms of sleep) plus a save (10 ms), so they land
    # mid-step, mid-save or between the two. The middle one comes at most 50 ms after the
    # job is told to go: while it builds the trainer, loads the checkpoint or trains.
    draw = random.Random(f"kills-{config}")
    kills = [
        (draw.randint(4, 5), draw.uniform(0.0, 0.04)),
        (0, draw.uniform(0.0, 0.05)),
        (draw.randint(2, 5), draw.uniform(0.0, 0.04)),
    ]
    slow = ["--step-sleep", str(STEP_SLEEP), "--save-sleep", str(SAVE_SLEEP)]
    starts = []
    for job_, (batches, delay) in zip(start_jobs(config, [slow] * len(kills)), kills, strict=True):
        resume_from = _saved_batches(tmp_path)
        job_.go()
        pid = job_.process.pid

        def trained_enough(pid: int = pid, batches: int = batches) -> bool:
            return sum(r["pid"] == pid for r in _records(tmp_path)) >= batches

        _wait_until(trained_enough, f"{batches} batches", tmp_path, job_.process)
        time.sleep(delay)
        os.kill(pid, signal.SIGKILL)
        assert job_.process.wait(timeout=60) == -signal.SIGKILL, _output(tmp_path)
        mine = [r["gi"] for r in _records(tmp_path) if r["pid"] == pid]
        if mine:
            starts.append((mine[0], resume_from + 1))
    output = _output(tmp_path)
    assert "Traceback" not in output, output

    resume_from = _saved_batches(tmp_path)
    assert resume_from > 0
    newest = hlt.find_last_checkpoint(job.checkpoint_dir(tmp_path))
    first, printed = _finish_in_process(tmp_path, config, references[config], capsys)
    assert f"Resuming training from checkpoint {newest}" in printed
    # Every run started with the batch after its newest checkpoint.
    starts.append((first, resume_from + 1))
    assert [actual for actual, _ in starts] == [expected for _, expected in starts]


@pytest.mark.slow
def test_sigkill_in_the_middle_of_a_save_keeps_the_previous_checkpoint(
    references: dict[str, Reference],
    tmp_path: pathlib.Path,
    start_jobs: Callable[[str, list[list[str]]], list[Job]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    (hanging,) = start_jobs("iteration", [["--hang-in-save", "3"]])
    hanging.go()
    marker = tmp_path / f"in_save_{hanging.process.pid}"
    _wait_until(marker.exists, marker.name, tmp_path, hanging.process)
    os.kill(hanging.process.pid, signal.SIGKILL)
    assert hanging.process.wait(timeout=60) == -signal.SIGKILL

    folder = job.checkpoint_dir(tmp_path)
    leftovers = [p for p in folder.iterdir() if p.suffix != ".pth"]
    assert len(leftovers) == 1 and leftovers[0].stat().st_size > 0, leftovers
    assert sorted(p.name for p in folder.glob("*.pth")) == [
        "resume_epoch_1_iter_1.pth",
        "resume_epoch_2_iter_2.pth",
    ]
    newest = hlt.find_last_checkpoint(folder)
    assert newest == folder / "resume_epoch_2_iter_2.pth"
    hlt.register_trainer_types_for_safe_load()
    contents = torch.load(folder / "resume_epoch_2_iter_2.pth", weights_only=True)
    assert contents["training_state"].current_iteration == 2

    first, printed = _finish_in_process(tmp_path, "iteration", references["iteration"], capsys)
    assert first == 5
    assert f"Resuming training from checkpoint {newest}" in printed
