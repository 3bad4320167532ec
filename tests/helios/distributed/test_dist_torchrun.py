"""Distributed training under torchrun: 2 CPU processes on gloo.

Every test starts ``dist_job.py`` (next to this file) through
``python -m torch.distributed.run --nproc_per_node=2``. The reference job runs three fits in
the same two processes (see the job's docstring); the other tests kill the whole job at
random moments and resume it, or plant an exception on rank 1.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import pytest
import torch

pytestmark = pytest.mark.slow

JOB_PATH = pathlib.Path(__file__).with_name("dist_job.py")
REPO_ROOT = pathlib.Path(__file__).resolve().parents[3]
RANKS = (0, 1)
BATCHES = 18  # per rank: 9 iterations of 2 batches
# The tests that read the module's reference job run on one xdist worker, so it runs once.
SHARES_REFERENCE = pytest.mark.xdist_group("dist_torchrun_reference")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("localhost", 0))
        return int(sock.getsockname()[1])


def _torchrun(workdir: pathlib.Path, scenario: str, *options: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={_free_port()}",
        str(JOB_PATH),
        str(workdir),
        scenario,
        *options,
    ]


def _run(workdir: pathlib.Path, scenario: str) -> subprocess.CompletedProcess[str]:
    workdir.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        _torchrun(workdir, scenario),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )


def _records(
    workdir: pathlib.Path, rank: int, fit: str, keep_pid: bool = False
) -> list[dict[str, Any]]:
    """Return the per-batch records of a rank (without the process id, unless asked)."""
    path = workdir / f"batches{rank}_{fit}.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    if not keep_pid:
        for record in records:
            del record["pid"]
    return records


def _result(workdir: pathlib.Path, rank: int, fit: str) -> dict[str, Any]:
    return json.loads((workdir / f"result{rank}_{fit}.json").read_text())  # type: ignore[no-any-return]


def _weights(workdir: pathlib.Path, rank: int, fit: str) -> dict[str, torch.Tensor]:
    return torch.load(workdir / f"final{rank}_{fit}.pt", weights_only=True)  # type: ignore[no-any-return]


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"weights differ in {key}"


def _alive(pid: int) -> bool:
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _descendants(root: int) -> list[int]:
    """Return the pids of every live descendant of ``root`` (read from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry.name))
    found, stack = [], [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    workdir = tmp_path_factory.mktemp("reference")
    proc = _run(workdir, "reference")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return workdir


@SHARES_REFERENCE
def test_both_ranks_finish_with_identical_weights(reference: pathlib.Path) -> None:
    for fit in ("main", "early", "stop"):
        _assert_same_weights(_weights(reference, 0, fit), _weights(reference, 1, fit))
    assert [len(_records(reference, rank, "main")) for rank in RANKS] == [BATCHES, BATCHES]
    # Training changed the weights: the ranks agree on something non-trivial.
    torch.manual_seed(0)
    initial = torch.nn.Linear(3, 8).weight
    assert not torch.equal(_weights(reference, 0, "main")["0.weight"], initial)


@SHARES_REFERENCE
def test_model_plugin_and_trainer_see_the_distributed_run(reference: pathlib.Path) -> None:
    for rank in RANKS:
        result = _result(reference, rank, "main")
        expected = {
            "is_distributed": True,
            "rank": rank,
            "device": "cpu",
            "map_loc": {"cuda:0": "cpu"},
        }
        assert result["model"] == expected
        assert result["plugin"] == expected
        assert result["trainer"] == {
            "rank": rank,
            "local_rank": rank,
            "queue_is_none": True,
            "is_distributed": True,
        }


@SHARES_REFERENCE
def test_ranks_get_disjoint_shards_reshuffled_every_epoch(reference: pathlib.Path) -> None:
    per_rank = {rank: _records(reference, rank, "main") for rank in RANKS}
    orders = set()
    for epoch in range(1, 7):
        shards = [
            [i for r in per_rank[rank] if r["epoch"] == epoch for i in r["ids"]] for rank in RANKS
        ]
        assert [len(shard) for shard in shards] == [10, 10]
        assert sorted(shards[0] + shards[1]) == list(range(20))
        orders.add(tuple(shards[0]))
    assert len(orders) == 6


@SHARES_REFERENCE
def test_prepare_data_runs_on_local_rank_0_while_the_others_wait(reference: pathlib.Path) -> None:
    # Once per fit or test, on rank 0; the data module's setup raises if it ran before
    # prepare_data had finished.
    lines = (reference / "prepared.jsonl").read_text().splitlines()
    assert [json.loads(line)["rank"] for line in lines] == ["0"] * 4


@SHARES_REFERENCE
def test_losses_are_averaged_across_ranks(reference: pathlib.Path) -> None:
    rank0, rank1 = (_records(reference, rank, "main") for rank in RANKS)
    for a, b in zip(rank0, rank1, strict=True):
        assert a["gi"] == b["gi"]
        assert a["local_loss"] != b["local_loss"]
        assert a["mean_loss"] == b["mean_loss"]
        assert a["mean_loss"] == pytest.approx((a["local_loss"] + b["local_loss"]) / 2)


@SHARES_REFERENCE
def test_only_rank0_writes_logs_tensorboard_and_checkpoints(reference: pathlib.Path) -> None:
    logs = list((reference / "logs").iterdir())
    assert len(logs) == 1
    text = logs[0].read_text()
    assert text.count("Saved checkpoint") == 9
    assert text.count("Starting epoch 1\n") == 1
    runs = list((reference / "runs").iterdir())
    assert runs == [reference / "runs" / logs[0].stem]
    # One events file from fit, one from the test that continues the run; both by rank 0.
    rank0_pid = _records(reference, 0, "main", keep_pid=True)[0]["pid"]
    events = sorted(path.name for path in runs[0].glob("events.out.tfevents.*"))
    assert len(events) == 2
    assert all(name.rsplit(".", 2)[1] == str(rank0_pid) for name in events)

    saves = [json.loads(line) for line in (reference / "saves.jsonl").read_text().splitlines()]
    assert saves == [{"rank": 0}] * 9
    checkpoints = sorted((reference / "chkpt" / "dist").glob("*.pth"))
    assert len(checkpoints) == 9


@SHARES_REFERENCE
def test_checkpoints_hold_each_ranks_rng_and_sampler_position(reference: pathlib.Path) -> None:
    import helios.trainer as hlt

    hlt.register_trainer_types_for_safe_load()
    path = reference / "chkpt" / "dist" / "dist_epoch_2_iter_2.pth"
    saved = torch.load(path, weights_only=True)
    ranks = saved["ranks"]
    assert len(ranks) == 2
    # Iteration 2 ends at the first batch of epoch 2.
    position = {"epoch": 1, "start_iter": 1, "world_size": 2, "consumed": 8}
    assert [entry["sampler"] for entry in ranks] == [position] * 2
    # The ranks draw different amounts, so their streams differ.
    assert not torch.equal(ranks[0]["rng"]["torch"], ranks[1]["rng"]["torch"])
    assert torch.equal(saved["rng"]["torch"], ranks[0]["rng"]["torch"])


@SHARES_REFERENCE
def test_early_stop_on_one_ranks_metric_stops_both(reference: pathlib.Path) -> None:
    # Rank 1's metric never improves: 2 cycles without improvement, i.e. after epoch 2.
    for rank in RANKS:
        assert _result(reference, rank, "early")["stopped_at"] == 6
        assert [r["epoch"] for r in _records(reference, rank, "early")] == [1] * 3 + [2] * 3


@SHARES_REFERENCE
def test_should_training_stop_on_one_rank_stops_both_at_the_same_step(
    reference: pathlib.Path,
) -> None:
    for rank in RANKS:
        assert _result(reference, rank, "stop")["stopped_at"] == 5
        assert [r["gi"] for r in _records(reference, rank, "stop")] == [1, 2, 3, 4, 5]


@SHARES_REFERENCE
def test_test_after_fit_shards_the_test_data_and_uses_the_checkpoint(
    reference: pathlib.Path,
) -> None:
    per_rank = [
        [json.loads(line) for line in (reference / f"tested{rank}.jsonl").read_text().splitlines()]
        for rank in RANKS
    ]
    ids = [[i for record in records for i in record["ids"]] for records in per_rank]
    assert [len(shard) for shard in ids] == [4, 4]
    assert sorted(ids[0] + ids[1]) == list(range(8))
    # The tested weights are the trained ones, not a fresh network.
    net = torch.nn.Sequential(
        torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Dropout(0.3), torch.nn.Linear(8, 1)
    )
    net.load_state_dict(_weights(reference, 0, "main"))
    net.eval()
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(1234))
    for rank in RANKS:
        for record in per_rank[rank]:
            expected = net(x[record["ids"]]).sum().item()
            assert record["output"] == pytest.approx(expected, rel=1e-6)


def _launch(
    workdir: pathlib.Path,
    launches: list[subprocess.Popen[bytes]],
    *options: str,
    env: dict[str, str] | None = None,
) -> None:
    output = open(workdir / f"launch_{len(launches)}.out", "wb")  # noqa: SIM115
    with output:
        launches.append(
            subprocess.Popen(
                _torchrun(workdir, "resume", "--step-sleep", "0.04", *options),
                cwd=REPO_ROOT,
                stdout=output,
                stderr=subprocess.STDOUT,
                env=env,
            )
        )


def _kill_job(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL torchrun and its workers (which run in sessions of their own) at once."""
    pids = [proc.pid, *_descendants(proc.pid)]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)


def _batches_done(workdir: pathlib.Path) -> int:
    path = workdir / "batches0_main.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


@SHARES_REFERENCE
def test_sigkill_of_the_whole_job_then_rerun_is_bit_identical(
    reference: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    rng = random.Random()
    first = rng.randint(2, 8)
    kill_after = [first, rng.randint(first + 3, 15)]
    print(f"killing the job after {kill_after} batches of rank 0")
    launches: list[subprocess.Popen[bytes]] = []
    for target in kill_after:
        _launch(tmp_path, launches)
        deadline = time.monotonic() + 120
        while _batches_done(tmp_path) < target and launches[-1].poll() is None:
            assert time.monotonic() < deadline, "the job made no progress"
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.05))
        _kill_job(launches[-1])
    _launch(tmp_path, launches)
    assert launches[-1].wait(timeout=240) == 0, (tmp_path / "launch_2.out").read_text()

    for rank in RANKS:
        _assert_same_weights(_weights(tmp_path, rank, "main"), _weights(reference, rank, "main"))
        # Every batch re-done after a kill repeats the original, and counted once the
        # batches are those of the uninterrupted run.
        by_iteration: dict[int, dict[str, Any]] = {}
        for record in _records(tmp_path, rank, "main"):
            earlier = by_iteration.setdefault(record["gi"], record)
            assert earlier == record, f"rank {rank} re-did batch {record['gi']} differently"
        assert [by_iteration[gi] for gi in sorted(by_iteration)] == _records(
            reference, rank, "main"
        )
    # Each launch after a kill resumed from a checkpoint rather than starting over.
    records = _records(tmp_path, 0, "main", keep_pid=True)
    first_batches = [r["gi"] for i, r in enumerate(records) if r["pid"] != records[i - 1]["pid"]]
    assert len(first_batches) == 3
    assert first_batches[0] == 1 and first_batches[1] > 1 and first_batches[2] > first_batches[1]


def _assert_resumed_like(reference: pathlib.Path, workdir: pathlib.Path, launches: int) -> None:
    """Both ranks end with the reference weights, re-done batches repeat the originals, and
    every launch after the first resumed from a checkpoint."""
    for rank in RANKS:
        _assert_same_weights(_weights(workdir, rank, "main"), _weights(reference, rank, "main"))
        by_iteration: dict[int, dict[str, Any]] = {}
        for record in _records(workdir, rank, "main"):
            earlier = by_iteration.setdefault(record["gi"], record)
            assert earlier == record, f"rank {rank} re-did batch {record['gi']} differently"
        assert [by_iteration[gi] for gi in sorted(by_iteration)] == _records(
            reference, rank, "main"
        )
    records = _records(workdir, 0, "main", keep_pid=True)
    first_batches = [r["gi"] for i, r in enumerate(records) if r["pid"] != records[i - 1]["pid"]]
    assert len(first_batches) == launches
    assert first_batches[0] == 1 and first_batches[1:] == sorted(set(first_batches[1:]))
    assert all(gi > 1 for gi in first_batches[1:])


def _lines(path: pathlib.Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_sigkill_during_uploads_to_a_store_then_rerun_is_bit_identical(
    reference: pathlib.Path, tmp_path: pathlib.Path, s3_env: Any
) -> None:
    # The checkpoints go to S3 (rank 0 uploads them in the background while both ranks
    # train); each upload writes half its bytes, then pauses. The whole job is SIGKILLed
    # twice during an upload, a random moment into it, then runs to the end from the store:
    # no partial checkpoint is ever loaded, and the end is the uninterrupted run's.
    import helios.trainer as hlt
    from helios.trainer.checkpoint.store import PENDING_SUFFIX

    bucket = s3_env.new_bucket("torchrun")
    folder = f"s3://{bucket}/runs/dist"
    env = {**os.environ, **s3_env.environment()}
    options = ("--chkpt-root", f"s3://{bucket}/runs", "--save-sleep", "0.3")
    draw = random.Random(25)
    saves = tmp_path / "saves.jsonl"
    interrupted = 0
    launches: list[subprocess.Popen[bytes]] = []
    for _ in range(2):
        target = _lines(saves) + draw.randint(2, 4)
        _launch(tmp_path, launches, *options, env=env)
        deadline = time.monotonic() + 120
        while _lines(saves) < target and launches[-1].poll() is None:
            assert time.monotonic() < deadline, "the job made no progress"
            time.sleep(0.01)
        time.sleep(draw.uniform(0.03, 0.2))  # into the upload's pause
        _kill_job(launches[-1])
        objects = [pathlib.PurePosixPath(o).name for o in _store_objects(folder)]
        interrupted += any(o.endswith(PENDING_SUFFIX) for o in objects)
        newest = hlt.find_last_checkpoint(folder)
        assert newest is not None
        hlt.checkpoint.read_checkpoint(newest)  # committed means complete
    assert interrupted, "no kill landed during an upload"
    _launch(tmp_path, launches, *options, env=env)
    assert launches[-1].wait(timeout=240) == 0, (tmp_path / "launch_2.out").read_text()

    _assert_resumed_like(reference, tmp_path, launches=3)
    assert hlt.find_last_checkpoint(folder) == f"{folder}/dist_epoch_6_iter_9.pth"
    assert not [o for o in _store_objects(folder) if o.endswith(PENDING_SUFFIX)]


def _store_objects(url: str) -> list[str]:
    import fsspec

    fs, path = fsspec.core.url_to_fs(url, skip_instance_cache=True)
    return list(fs.find(path))


def test_exception_on_rank1_ends_the_job_quickly_with_its_traceback(
    tmp_path: pathlib.Path,
) -> None:
    proc = _run(tmp_path, "crash")
    ended = time.time()
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    # Timed from the failure, not from the start (slow on a loaded machine); a rank left
    # waiting in a collective would hang for gloo's 30 minutes.
    assert ended - float((tmp_path / "failed_main").read_text()) < 45, output
    assert "fit failed on rank 1 in " in output
    assert "RuntimeError: planted failure on rank 1 at iteration 3" in output
    assert 'dist_job.py", line' in output
    # After the failure the process group is gone; a new fit says so instead of hanging.
    assert "second fit on rank 1 returned False" in output
    assert "cannot be joined again; start a new torchrun job" in output
    # Rank 1 failed inside batch 3: no rank finished that batch, none trained to the end,
    # and none was left running.
    assert [max(r["gi"] for r in _records(tmp_path, rank, "main")) for rank in RANKS] == [2, 2]
    assert not list(tmp_path.glob("final*"))
    pids = [int(p.name.rsplit("_", 1)[1]) for p in tmp_path.glob("started_main_*")]
    assert len(pids) == 2
    assert not any(_alive(pid) for pid in pids)


# -- preemption, orphans and elastic restarts --------------------------------------------------


def _wait_for_batches(workdir: pathlib.Path, count: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while _batches_done(workdir) < count:
        assert proc.poll() is None, "the job ended before it was interrupted"
        assert time.monotonic() < deadline, "the job made no progress"
        time.sleep(0.01)


def _newest_checkpoint_iteration(workdir: pathlib.Path) -> int:
    import helios.trainer as hlt

    hlt.register_trainer_types_for_safe_load()
    newest = hlt.find_last_checkpoint(workdir / "chkpt" / "dist")
    assert newest is not None
    return int(torch.load(newest, weights_only=True)["training_state"].global_iteration)


def _assert_finished_like(reference: pathlib.Path, workdir: pathlib.Path) -> None:
    for rank in RANKS:
        _assert_same_weights(_weights(workdir, rank, "main"), _weights(reference, rank, "main"))


@SHARES_REFERENCE
def test_sigterm_to_torchrun_saves_where_the_workers_are_and_the_rerun_is_exact(
    reference: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    launches: list[subprocess.Popen[bytes]] = []
    _launch(tmp_path, launches)
    _wait_for_batches(tmp_path, 5, launches[0])
    launches[0].send_signal(signal.SIGTERM)  # what a scheduler sends; torchrun forwards it
    launches[0].wait(timeout=120)
    output = (tmp_path / "launch_0.out").read_text()
    assert output.count("Training stopped by SIGTERM") == 1, output  # rank 0 says it once
    assert "Exit code 143" in output
    # The workers agreed on one position, saved there, and trained nothing after it.
    assert _newest_checkpoint_iteration(tmp_path) == _batches_done(tmp_path)
    _launch(tmp_path, launches)
    assert launches[1].wait(timeout=240) == 0, (tmp_path / "launch_1.out").read_text()
    _assert_finished_like(reference, tmp_path)


def test_a_signal_stops_a_run_that_saves_rarely_within_two_agreements(
    tmp_path: pathlib.Path,
) -> None:
    # No save or validation makes the ranks agree early: only the periodic agreement (every
    # AGREE_EVERY iterations, read at the next one) tells them. The signal comes after the
    # save at iteration 25 and long before the next one (50).
    import importlib.util

    from helios.trainer.preemption import AGREE_EVERY

    spec = importlib.util.spec_from_file_location("dist_job", JOB_PATH)
    assert spec is not None and spec.loader is not None
    dist_job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dist_job)

    command = _torchrun(tmp_path, "sparse", "--step-sleep", "0.03")
    with open(tmp_path / "sparse.out", "wb") as output:
        job = subprocess.Popen(command, cwd=REPO_ROOT, stdout=output, stderr=subprocess.STDOUT)
    signalled_at = (dist_job.SPARSE_CHKPT_EVERY + 3) * dist_job.ACCUMULATION
    _wait_for_batches(tmp_path, signalled_at, job)
    sent_after = _batches_done(tmp_path)  # batches rank 0 had finished when it was sent
    job.send_signal(signal.SIGTERM)
    job.wait(timeout=120)
    output = (tmp_path / "sparse.out").read_text()
    assert output.count("Training stopped by SIGTERM") == 1, output
    stopped = _newest_checkpoint_iteration(tmp_path)  # the batch count of the stop's save
    assert [len(_records(tmp_path, rank, "main")) for rank in RANKS] == [stopped, stopped]
    # At most two agreements after the signal (plus the iteration it lands in).
    bound = (2 * AGREE_EVERY + 1) * dist_job.ACCUMULATION
    assert sent_after < stopped <= sent_after + bound, (sent_after, stopped)
    assert stopped < 2 * dist_job.SPARSE_CHKPT_EVERY * dist_job.ACCUMULATION


@SHARES_REFERENCE
@pytest.mark.parametrize("own_group", [False, True], ids=["helios_group", "script_group"])
def test_workers_of_a_killed_torchrun_agent_save_and_exit(
    reference: pathlib.Path, tmp_path: pathlib.Path, own_group: bool
) -> None:
    # script_group: the script initialised the process group itself before fit; helios
    # still makes its workers end with their agent.
    options = ["--own-group"] if own_group else []
    launches: list[subprocess.Popen[bytes]] = []
    _launch(tmp_path, launches, *options)
    _wait_for_batches(tmp_path, 5, launches[0])
    workers = _descendants(launches[0].pid)
    assert len(workers) == 2
    os.kill(launches[0].pid, signal.SIGKILL)
    launches[0].wait(timeout=30)
    deadline = time.monotonic() + 60
    while any(_alive(pid) for pid in workers):
        assert time.monotonic() < deadline, "orphaned workers are still running"
        time.sleep(0.05)
    # They stopped because their agent died (SIGTERM from the kernel), not at the end.
    output = (tmp_path / "launch_0.out").read_text()
    assert output.count("Training stopped by SIGTERM") == 1, output
    assert _batches_done(tmp_path) < BATCHES
    assert _newest_checkpoint_iteration(tmp_path) == _batches_done(tmp_path)
    _launch(tmp_path, launches, *options)
    assert launches[1].wait(timeout=240) == 0, (tmp_path / "launch_1.out").read_text()
    _assert_finished_like(reference, tmp_path)


@SHARES_REFERENCE
def test_max_restarts_brings_back_a_killed_rank_and_ends_bit_identical(
    reference: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--max-restarts=1",
        "--nproc_per_node=2", str(JOB_PATH), str(tmp_path), "resume", "--step-sleep", "0.04",
    ]  # fmt: skip
    with open(tmp_path / "elastic.out", "wb") as output:
        proc = subprocess.Popen(command, cwd=REPO_ROOT, stdout=output, stderr=subprocess.STDOUT)
        records = tmp_path / "batches1_main.jsonl"
        deadline = time.monotonic() + 120
        while not records.exists() or len(records.read_text().splitlines()) < 5:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        rank1 = json.loads(records.read_text().splitlines()[-1])["pid"]
        os.kill(rank1, signal.SIGKILL)
        assert proc.wait(timeout=180) == 0, (tmp_path / "elastic.out").read_text()
    text = (tmp_path / "elastic.out").read_text()
    assert "Resuming training from checkpoint" in text
    assert "Connection refused" not in text
    _assert_finished_like(reference, tmp_path)


def _ids_by_launch(workdir: pathlib.Path, epoch: int, ranks: int) -> dict[int, list[int]]:
    """The sample ids trained in ``epoch``, per process id, over ``ranks`` record files."""
    found: dict[int, list[int]] = {}
    for rank in range(ranks):
        for record in _records(workdir, rank, "main", keep_pid=True):
            if record["epoch"] == epoch:
                found.setdefault(record["pid"], []).extend(record["ids"])
    return found


@pytest.fixture(scope="module")
def preempted(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A 2-process job stopped by SIGTERM after 4 batches of rank 0 (copied by each user)."""
    workdir = tmp_path_factory.mktemp("preempted")
    launches: list[subprocess.Popen[bytes]] = []
    _launch(workdir, launches)
    _wait_for_batches(workdir, 4, launches[0])
    launches[0].send_signal(signal.SIGTERM)
    launches[0].wait(timeout=120)
    return workdir


@pytest.mark.xdist_group("dist_torchrun_preempted")
@pytest.mark.parametrize("new_world_size", [1, 3])
def test_a_checkpoint_resumes_on_another_number_of_processes(
    new_world_size: int, preempted: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    workdir = shutil.copytree(preempted, tmp_path / "run")
    import helios.trainer as hlt

    hlt.register_trainer_types_for_safe_load()
    # Resume from a checkpoint inside an epoch (one is written every iteration): drop the
    # newer ones, wherever the signal happened to stop the job.
    folder = workdir / "chkpt" / "dist"
    inside = []
    for path in hlt.checkpoint.list_checkpoints(folder):
        saved = torch.load(path, weights_only=True)
        if 0 < saved["ranks"][0]["sampler"]["consumed"] < 20:
            inside.append((path, saved))
    newest, saved = inside[0]
    for path in hlt.checkpoint.list_checkpoints(folder):
        if path == newest:
            break
        path.unlink()
    epoch, position = saved["training_state"].global_epoch, saved["ranks"][0]["sampler"]
    assert position["world_size"] == 2, position
    done = saved["training_state"].global_iteration
    first_launch: dict[int, list[int]] = {}
    for rank in range(2):
        for record in _records(workdir, rank, "main", keep_pid=True):
            if record["epoch"] == epoch and record["gi"] <= done:
                first_launch.setdefault(record["pid"], []).extend(record["ids"])
    before = [i for ids in first_launch.values() for i in ids]

    command = _torchrun(workdir, "resume")
    command[3] = f"--nproc_per_node={new_world_size}"
    resumed = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=240)
    output = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, output
    assert f"written by 2 process(es) and this run has {new_world_size}" in output
    if new_world_size == 3:
        assert "ranks [2] have no saved RNG states" in output
        # Rank 2 has no saved streams: its first draws come from (seed, iteration, rank),
        # never from another rank's streams; ranks 0 and 1 continue their own.
        import random as python_random

        from helios.core import rng
        from helios.data.datamodule import sample_seed

        first = {}
        for rank in range(3):
            resumed_records = [
                r for r in _records(workdir, rank, "main", keep_pid=True)
                if r["pid"] not in first_launch and r["gi"] == done + 1
            ]  # fmt: skip
            first[rank] = resumed_records[-1]["py_draw"]
        seed = sample_seed(rng.get_default_seed(), done, "rank2")
        assert first[2] == python_random.Random(seed).random()
        # (Ranks 0 and 1 share Python's stream in this job: only their torch draws differ.)
        assert first[2] != first[0], first
    after = [
        i
        for pid, ids in _ids_by_launch(workdir, epoch, new_world_size).items()
        if pid not in first_launch
        for i in ids
    ]
    # The rest of the epoch, sharded among the new processes: nothing seen twice or skipped
    # (a distributed sampler pads the rest to a multiple of the world size).
    assert set(before).isdisjoint(after)
    assert set(before) | set(after) == set(range(20))
    rest = 20 - position["consumed"]
    assert len(after) == -(-rest // new_world_size) * new_world_size
