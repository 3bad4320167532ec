"""torchrun jobs over two simulated hosts: results, a dead node, a network partition.

Every job is ``node_job.py`` (next to this file) started on each node with the command of
``docs/howto/cluster.md`` (``torchrun`` with a c10d rendezvous on node 0), gloo on the CPU.
The references are the same job on one node (``--standalone``), with the same number of
processes.
"""

from __future__ import annotations

import itertools
import json
import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import cluster_docs
import pytest
import torch

import helios.trainer as hlt
from helios.core import safe_torch_load

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
# The tests on simulated hosts run in one pytest-xdist worker (--dist loadgroup).
cluster = pytest.mark.xdist_group("cluster")

JOB = pathlib.Path(__file__).with_name("node_job.py")
_PORTS = itertools.count(29400 + os.getpid() % 200 * 10)


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, **cluster_docs.exports(cluster_docs.block("torchrun-nodes"))}
    env.update(extra)
    return env


def _node_command(
    hosts: Any,
    job_id: str,
    port: int,
    nproc: int,
    max_restarts: int,
    args: Sequence[str],
    nnodes: str = "2",
) -> list[str]:
    return cluster_docs.torchrun(
        cluster_docs.block("torchrun-nodes"),
        JOB,
        args,
        nnodes=nnodes,
        nproc_per_node=str(nproc),
        max_restarts=str(max_restarts),
        rdzv_endpoint=f"{hosts.hostname(0)}:{port}",
        rdzv_id=job_id,
    )


class Job:
    """One torchrun job over the simulated hosts: one ``torchrun`` per node."""

    def __init__(
        self,
        hosts: Any,
        name: str,
        args: Sequence[str],
        nproc: int = 1,
        max_restarts: int = 0,
        env: dict[str, str] | None = None,
        nnodes: str = "2",
    ) -> None:
        self.hosts = hosts
        self.name = name
        self.port = next(_PORTS)
        self.command = _node_command(hosts, name, self.port, nproc, max_restarts, args, nnodes)
        self.env = env or _env()
        self.procs = {node: self.start(node) for node in range(2)}

    def log(self, node: int) -> pathlib.Path:
        return self.hosts.shared / f"{self.name}-node{node}.log"

    def start(self, node: int) -> subprocess.Popen[bytes]:
        """Start (or start again: a replacement) the node's torchrun."""
        return self.hosts.popen(node, self.command, self.log(node), env=self.env)

    def output(self) -> str:
        return "\n".join(
            f"--- node {node}\n{self.log(node).read_text(errors='replace')[-4000:]}"
            for node in range(2)
        )

    def wait(self, timeout: float = 180) -> dict[int, int]:
        """Wait for every node's torchrun; return their exit codes."""
        deadline = time.monotonic() + timeout
        codes = {}
        for node, proc in self.procs.items():
            try:
                codes[node] = proc.wait(max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                for k in range(2):
                    self.hosts.kill_node(k)
                raise AssertionError(f"job {self.name} hangs:\n{self.output()}") from None
        return codes


def _records(out: pathlib.Path, rank: int, sharding: str = "ddp") -> list[dict[str, Any]]:
    path = out / f"batches{rank}_{sharding}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def _batches(out: pathlib.Path, rank: int = 0, sharding: str = "ddp") -> int:
    path = out / f"batches{rank}_{sharding}.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def _without_process(record: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in record.items() if key not in ("pid", "host")}


def _assert_same_training(out: pathlib.Path, reference: pathlib.Path, world_size: int) -> None:
    """The final weights are bit-identical; every batch (re-done ones too) is the reference's."""
    for sharding in ("ddp", "fsdp"):
        if (
            not (reference / f"final_{sharding}.pt").exists()
            or not (out / f"batches0_{sharding}.jsonl").exists()
        ):
            continue
        final = torch.load(out / f"final_{sharding}.pt", weights_only=True)
        expected = torch.load(reference / f"final_{sharding}.pt", weights_only=True)
        assert final.keys() == expected.keys()
        for key in expected:
            assert torch.equal(final[key], expected[key]), f"{sharding}: {key} differs"
        for rank in range(world_size):
            by_iteration: dict[int, dict[str, Any]] = {}
            for record in map(_without_process, _records(out, rank, sharding)):
                first = by_iteration.setdefault(record["iteration"], record)
                assert first == record, f"rank {rank} re-did batch {record['iteration']} otherwise"
            assert [by_iteration[i] for i in sorted(by_iteration)] == [
                _without_process(r) for r in _records(reference, rank, sharding)
            ]


@pytest.fixture(scope="module")
def one_node(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The reference runs on one node (no namespaces), by world size, made when first asked."""
    made: dict[int, pathlib.Path] = {}

    def reference(world_size: int) -> pathlib.Path:
        if world_size not in made:
            out = tmp_path_factory.mktemp(f"one_node_{world_size}")
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
            command += [f"--nproc-per-node={world_size}", str(JOB), str(out), str(out / "chkpt")]
            command += ["--sharding", "both"]
            result = subprocess.run(command, capture_output=True, text=True, timeout=240)
            assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
            made[world_size] = out
        return made[world_size]

    return reference


@cluster
@pytest.mark.parametrize("per_node", [1, 2])
def test_two_nodes_train_bit_for_bit_like_one_node(
    hosts: Any, one_node: Any, per_node: int
) -> None:
    out = hosts.shared / f"two_nodes_{per_node}"
    out.mkdir()
    job = Job(
        hosts, f"nodes{per_node}", [str(out), str(out / "chkpt"), "--sharding", "both"], per_node
    )
    assert job.wait() == {0: 0, 1: 0}, job.output()
    world_size = 2 * per_node
    _assert_same_training(out, one_node(world_size), world_size)

    # helios found each process's place from torchrun: global and local ranks, the node.
    for rank in range(world_size):
        seen = json.loads((out / f"seen{rank}_ddp.json").read_text())
        local = rank % per_node
        assert seen["hostname"] == hosts.hostname(rank // per_node)
        assert seen["trainer_rank"] == rank
        assert seen["trainer_local_rank"] == local
        assert seen["model_rank"] == local  # the 1.2.7 name: the local rank
        assert seen["model_local_rank"] == local
        assert seen["model_global_rank"] == rank


@cluster
def test_a_dead_node_ends_the_job_and_a_replacement_resumes_it(hosts: Any, one_node: Any) -> None:
    out = hosts.shared / "dead_node"
    out.mkdir()
    args = [str(out), str(out / "chkpt"), "--step-sleep", "0.15"]

    # Without restarts: the processes of node 1 are killed mid-epoch; node 0 ends at once.
    first = Job(hosts, "dead1", args)
    _wait_for_batches(out, 5, first)
    hosts.kill_node(1)
    killed = time.monotonic()
    code = first.procs[0].wait(timeout=60)
    ended_after = time.monotonic() - killed
    print(f"node 0 ended {ended_after:.1f} s after node 1 died, with {code}")
    assert code != 0, first.output()
    assert ended_after < 30, first.output()

    # With --max-restarts: node 1 dies again; node 0 restarts its processes and waits for a
    # replacement of node 1 (the same command), with which the job resumes and finishes.
    second = Job(hosts, "dead2", args, max_restarts=1, env=_env(LOGLEVEL="INFO"))
    _wait_for_batches(out, _batches(out) + 3, second)
    hosts.kill_node(1)
    _wait_for_line(second.log(0), "will restart worker group", second)
    second.procs[1] = second.start(1)
    assert second.wait() == {0: 0, 1: 0}, second.output()

    _assert_same_training(out, one_node(2), 2)
    pids = [record["pid"] for record in _records(out, 0)]
    assert len(set(pids)) == 3  # the first job, the second, and its restarted process


@cluster
def test_an_elastic_job_goes_on_with_the_node_left(hosts: Any) -> None:
    # --nnodes=1:2: when node 1 dies, node 0 restarts its process and, no other node
    # joining, goes on alone, resuming mid-epoch on one process instead of two.
    out = hosts.shared / "elastic"
    out.mkdir()
    args = [str(out), str(out / "chkpt"), "--step-sleep", "0.15"]
    job = Job(hosts, "elastic", args, max_restarts=1, nnodes="1:2")
    _wait_for_batches(out, 5, job)
    hosts.kill_node(1)
    assert job.procs[0].wait(timeout=240) == 0, job.output()
    assert "Resuming training from checkpoint" in job.log(0).read_text(errors="replace")

    # The history that counts: what both ranks trained before the checkpoint the restart
    # resumed from, then what node 0 trained alone. Every epoch trains every sample once.
    rank0 = _records(out, 0)
    restarted = rank0[-1]["pid"]
    alone = [r for r in rank0 if r["pid"] == restarted]
    before = [r for r in rank0 + _records(out, 1) if r["pid"] != restarted]
    resumed_at = alone[0]["iteration"]
    assert len(alone[0]["ids"]) == 12  # the whole global batch on the one process left
    history = [r for r in before if r["iteration"] < resumed_at] + alone
    iterations = sorted({r["iteration"] for r in history})
    assert iterations == list(range(iterations[0], iterations[0] + 12))
    for epoch in {r["epoch"] for r in history}:
        ids = [i for r in history if r["epoch"] == epoch for i in r["ids"]]
        assert sorted(ids) == list(range(48)), f"epoch {epoch}"


@cluster
def test_a_partition_ends_the_job_in_bounded_time_and_it_resumes(hosts: Any, one_node: Any) -> None:
    # The documented node setting and a short process-group timeout: Trainer(dist_timeout=10).
    for node in range(2):
        words = cluster_docs.shell_words(cluster_docs.block("node-sysctl"))
        result = hosts.run(node, words)
        assert result.returncode == 0, result.stderr
    timeout = 10
    env = _env()
    out = hosts.shared / "partition"
    out.mkdir()
    args = [str(out), str(out / "chkpt"), "--step-sleep", "0.15", "--dist-timeout", str(timeout)]

    cut = Job(hosts, "cut", args, env=env)
    _wait_for_batches(out, 5, cut)
    hosts.set_link(1, up=False)
    down = time.monotonic()
    try:
        codes = cut.wait(timeout=120)
    finally:
        hosts.set_link(1, up=True)
    ended_after = time.monotonic() - down
    print(f"every process ended {ended_after:.1f} s after the link went down: {codes}")
    assert all(code != 0 for code in codes.values()), cut.output()
    assert ended_after < timeout + 40, cut.output()

    # Nothing committed was damaged: the newest checkpoint loads.
    hlt.register_trainer_types_for_safe_load()
    newest = hlt.find_last_checkpoint(out / "chkpt" / "ddp")
    assert newest is not None
    assert safe_torch_load(newest)["training_state"].global_iteration >= 4

    again = Job(hosts, "healed", args, env=env)
    assert again.wait() == {0: 0, 1: 0}, again.output()
    _assert_same_training(out, one_node(2), 2)


@cluster
def test_a_chkpt_root_on_per_node_disks_fails_clearly_instead_of_resuming_apart(
    hosts: Any,
) -> None:
    # chkpt_root on each node's local disk: the same path, a different folder per node.
    out = hosts.shared / "local_disks"
    out.mkdir()
    chkpt = hosts.local / "chkpt_local"
    first = Job(hosts, "local1", [str(out), str(chkpt), "--iterations", "3"])
    assert first.wait() == {0: 0, 1: 0}, first.output()  # only rank 0 writes the files
    assert hlt.find_last_checkpoint(hosts.local_disk(0) / "chkpt_local" / "ddp") is not None
    assert hlt.find_last_checkpoint(hosts.local_disk(1) / "chkpt_local" / "ddp") is None
    trained = _batches(out, 1)

    # Resuming: rank 0 would resume, rank 1 (node 1) sees no checkpoint. Both stop before
    # training, naming node 1 and the checkpoint, instead of resuming from different states.
    again = Job(hosts, "local2", [str(out), str(chkpt), "--iterations", "6"])
    assert again.wait(timeout=120) == {0: 1, 1: 1}, again.output()
    newest = hlt.find_last_checkpoint(hosts.local_disk(0) / "chkpt_local" / "ddp")
    assert newest is not None
    expected = (
        f"CheckpointNotSharedError: rank 0 resumes from the checkpoint "
        f"{chkpt / 'ddp' / newest.name}, but {hosts.hostname(1)} (rank 1) does not see it"
    )
    for node in range(2):
        assert expected in again.log(node).read_text(errors="replace"), again.output()
    assert _batches(out, 1) == trained

    # A sharded model: every rank writes its shards into chkpt_root, so a fresh run checks
    # that every rank sees it before anything trains.
    sharded = Job(hosts, "local3", [str(out), str(chkpt), "--sharding", "fsdp"])
    assert sharded.wait(timeout=120) == {0: 1, 1: 1}, sharded.output()
    expected = (
        f"CheckpointNotSharedError: the model is sharded, so every rank writes its shards "
        f"into {chkpt / 'fsdp'}, but {hosts.hostname(1)} (rank 1) does not see what rank 0 "
        "wrote into it"
    )
    for node in range(2):
        assert expected in sharded.log(node).read_text(errors="replace"), sharded.output()
    assert _batches(out, 0, "fsdp") == 0
    assert not [p.name for p in (hosts.local_disk(0) / "chkpt_local" / "fsdp").iterdir()
                if p.name.startswith(".helios-shared")]  # fmt: skip


def test_a_stalled_rank_fails_the_others_after_the_trainers_dist_timeout(
    tmp_path: pathlib.Path,
) -> None:
    # One host is enough: the last rank stops before a gradient sync (a frozen machine), and
    # Trainer(dist_timeout=5) bounds how long rank 0 waits for it in that sync.
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node=2", str(JOB), str(tmp_path), str(tmp_path / "chkpt")]
    command += ["--iterations", "6", "--stall-at", "3", "--dist-timeout", "5"]
    env = {key: value for key, value in os.environ.items() if key != "HELIOS_DIST_TIMEOUT"}
    log = tmp_path / "job.log"
    with open(log, "wb") as output:
        proc = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 120
        while "STALLED" not in log.read_text(errors="replace"):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.02)
        stalled = time.monotonic()
        code = proc.wait(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    ended_after = time.monotonic() - stalled
    text = log.read_text(errors="replace")
    print(f"the job ended {ended_after:.1f} s after a rank stalled, with {code}")
    assert code != 0, text
    assert "Timed out" in text, text
    assert 4.5 <= ended_after < 40, text


def _wait_for_line(log: pathlib.Path, text: str, job: Job, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text(errors="replace"):
        assert time.monotonic() < deadline, f"no {text!r} in {log.name}:\n{job.output()}"
        time.sleep(0.05)


def _wait_for_batches(out: pathlib.Path, count: int, job: Job, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while _batches(out) < count:
        if any(proc.poll() is not None for proc in job.procs.values()):
            raise AssertionError(f"job {job.name} ended early:\n{job.output()}")
        assert time.monotonic() < deadline, f"job {job.name} made no progress:\n{job.output()}"
        time.sleep(0.02)
