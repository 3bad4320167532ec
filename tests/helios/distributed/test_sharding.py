"""FSDP2 sharding under torchrun: 2 (and 3) CPU processes on gloo, and resuming on 1.

Every test starts ``shard_job.py`` (next to this file), whose model shards its network with
``Model.shard_network``, and compares what the runs wrote: the full weights at the end, the
per-batch records, and the checkpoint folders.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
from typing import Any

import pytest
import torch

import helios.trainer as hlt
from helios.trainer.checkpoint import io, layout, sharded

pytestmark = pytest.mark.slow

JOB_PATH = pathlib.Path(__file__).with_name("shard_job.py")
REPO_ROOT = pathlib.Path(__file__).resolve().parents[3]
sys.path.insert(0, str(JOB_PATH.parent))
import shard_job  # noqa: E402

# The tests that read one of the module's reference jobs run on one xdist worker, so each
# reference runs once.
SHARES_DROPOUT_REFERENCE = pytest.mark.xdist_group("sharding_dropout_reference")
SHARES_PLAIN_REFERENCE = pytest.mark.xdist_group("sharding_plain_reference")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("localhost", 0))
        return int(sock.getsockname()[1])


def _run(
    workdir: pathlib.Path,
    *options: str,
    processes: int = 2,
    expect_ok: bool = True,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the job with ``processes`` ranks under torchrun (1: a plain process)."""
    workdir.mkdir(parents=True, exist_ok=True)
    job = [str(JOB_PATH), str(workdir), *options]
    if processes == 1:
        command = [sys.executable, *job]
    else:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={processes}",
            f"--master_port={_free_port()}",
            *job,
        ]
    done = subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=env
    )
    if expect_ok:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return done


def _copy(source: pathlib.Path, target: pathlib.Path) -> pathlib.Path:
    shutil.copytree(source, target)
    return target


def _weights(workdir: pathlib.Path) -> dict[str, torch.Tensor]:
    return torch.load(workdir / "final.pt", weights_only=True)  # type: ignore[no-any-return]


def _batches(workdir: pathlib.Path, rank: int) -> list[dict[str, Any]]:
    lines = (workdir / f"batches{rank}.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def _folder(workdir: pathlib.Path) -> pathlib.Path:
    return workdir / "chkpt" / shard_job.SAVE_NAME


def _assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"weights differ in {key}"


def _assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


def _samples_after(workdir: pathlib.Path, first: int) -> dict[int, list[int]]:
    """The sample ids of every iteration from ``first`` on, all ranks together.

    A rank's file may hold records of a killed run before the resumed run's: the last
    record of an iteration wins.
    """
    seen: dict[int, list[int]] = {}
    for path in workdir.glob("batches*.jsonl"):
        runs = {r["iteration"]: r["ids"] for r in _batches(workdir, int(path.stem[7:]))}
        for iteration, ids in runs.items():
            if iteration >= first:
                seen.setdefault(iteration, []).extend(ids)
    return {iteration: sorted(ids) for iteration, ids in seen.items()}


@pytest.fixture(scope="module")
def dropout_reference(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """The uninterrupted 2-process run with dropout (each rank's RNG matters)."""
    workdir = tmp_path_factory.mktemp("dropout_reference")
    _run(workdir, "--dropout", "0.2")
    return workdir


@pytest.fixture(scope="module")
def plain_reference(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """The uninterrupted 2-process run without dropout (comparable across world sizes)."""
    workdir = tmp_path_factory.mktemp("plain_reference")
    _run(workdir, "--test")
    return workdir


@pytest.fixture(scope="module")
def plain_killed(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """The same run, rank 1 SIGKILLed when iteration 7 starts (mid-epoch: 4 per epoch)."""
    workdir = tmp_path_factory.mktemp("plain_killed")
    done = _run(workdir, "--kill-at", "7", expect_ok=False)
    assert done.returncode != 0
    return workdir


@SHARES_DROPOUT_REFERENCE
def test_sharded_checkpoints_are_folders_of_every_ranks_shards(
    dropout_reference: pathlib.Path,
) -> None:
    result = json.loads((dropout_reference / "result.json").read_text())
    assert result["sharded"] == ["<root>", "blocks.0", "blocks.1", "blocks.2"]
    folder = _folder(dropout_reference)
    names = sorted(path.name for path in folder.iterdir())
    expected = [f"sharded_epoch_{(i - 1) // 4 + 1}_iter_{i}.dcp" for i in range(1, 11)]
    assert names == sorted(expected)
    newest = hlt.find_last_checkpoint(folder)
    assert newest == folder / "sharded_epoch_3_iter_10.dcp"
    assert sorted(p.name for p in newest.iterdir()) == [
        ".metadata",
        "__0_0.distcp",
        "__1_0.distcp",
        "helios.pth",
    ]
    # Every rank wrote its own half of each network parameter.
    full = _weights(dropout_reference)
    own = sharded.load_full_state(newest)["model"]["net"]
    _assert_identical(own, full)


@SHARES_DROPOUT_REFERENCE
def test_killed_sharded_run_resumes_bit_identical(
    dropout_reference: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    workdir = tmp_path / "run"
    done = _run(workdir, "--dropout", "0.2", "--kill-at", "7", "--keep-last", "2", expect_ok=False)
    assert done.returncode != 0
    folder = _folder(workdir)
    kept = sorted(p.name for p in folder.glob("*.dcp"))
    assert kept == ["sharded_epoch_2_iter_5.dcp", "sharded_epoch_2_iter_6.dcp"]
    assert not list(folder.glob(".*"))  # no temporary folder: every save was committed

    _run(workdir, "--dropout", "0.2", "--keep-last", "2")

    _assert_identical(_weights(workdir), _weights(dropout_reference))
    for rank in (0, 1):
        expected = [r for r in _batches(dropout_reference, rank) if r["iteration"] >= 7]
        resumed = [r for r in _batches(workdir, rank) if r["iteration"] >= 7]
        assert resumed == expected
    kept = sorted(p.name for p in folder.glob("*.dcp"))
    assert kept == ["sharded_epoch_3_iter_10.dcp", "sharded_epoch_3_iter_9.dcp"]


@SHARES_DROPOUT_REFERENCE
def test_preempted_sharded_run_saves_where_it_stopped_and_resumes_bit_identical(
    dropout_reference: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    workdir = tmp_path / "run"
    options = ["--dropout", "0.2", "--chkpt-every", "5"]
    done = _run(workdir, *options, "--term-at", "6", expect_ok=False)
    assert done.returncode != 0
    assert "exitcode  : 143" in done.stderr or "exitcode: 143" in done.stderr, done.stderr[-3000:]
    folder = _folder(workdir)
    # The regular save at 5; the ranks agree to stop at the next validation (iteration 8,
    # with one every 4), and every rank writes its shards of the preemption's save there.
    assert sorted(p.name for p in folder.glob("*.dcp")) == [
        "sharded_epoch_2_iter_5.dcp",
        "sharded_epoch_2_iter_8.dcp",
    ]

    _run(workdir, *options)

    _assert_identical(_weights(workdir), _weights(dropout_reference))


@SHARES_DROPOUT_REFERENCE
def test_crash_between_shards_and_commit_keeps_the_previous_checkpoint(
    dropout_reference: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    workdir = tmp_path / "run"
    done = _run(workdir, "--dropout", "0.2", "--kill-in-commit", "4", expect_ok=False)
    assert done.returncode != 0
    folder = _folder(workdir)
    # Iteration 4's shards were all written, but the folder was never committed.
    unfinished = folder / ".sharded_epoch_1_iter_4.dcp.tmp"
    assert (unfinished / ".metadata").is_file()
    assert not (unfinished / layout.CONTENTS_NAME).exists()
    assert hlt.find_last_checkpoint(folder) == folder / "sharded_epoch_1_iter_3.dcp"

    _run(workdir, "--dropout", "0.2")

    assert not unfinished.exists()
    _assert_identical(_weights(workdir), _weights(dropout_reference))


@SHARES_DROPOUT_REFERENCE
def test_crash_while_writing_helios_pth_leaves_no_committed_folder_without_it(
    dropout_reference: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    # The commit's order: helios.pth complete in the hidden folder first, then the rename.
    # Killed halfway through helios.pth, no folder under a checkpoint's name lacks it.
    workdir = tmp_path / "run"
    done = _run(workdir, "--dropout", "0.2", "--kill-writing-contents", "4", expect_ok=False)
    assert done.returncode != 0
    folder = _folder(workdir)
    assert hlt.find_last_checkpoint(folder) == folder / "sharded_epoch_1_iter_3.dcp"
    for committed in folder.glob("*.dcp"):
        assert (committed / layout.CONTENTS_NAME).is_file(), committed
        io.read_local_checkpoint(committed)  # complete and readable
    unfinished = folder / ".sharded_epoch_1_iter_4.dcp.tmp"
    assert (unfinished / ".metadata").is_file()  # every rank's shards were written

    _run(workdir, "--dropout", "0.2")

    assert not unfinished.exists()
    _assert_identical(_weights(workdir), _weights(dropout_reference))


@SHARES_PLAIN_REFERENCE
def test_truncated_newest_shard_falls_back_to_the_previous_checkpoint(
    plain_reference: pathlib.Path, plain_killed: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    workdir = _copy(plain_killed, tmp_path / "run")
    newest = _folder(workdir) / "sharded_epoch_2_iter_6.dcp"
    shard = newest / "__1_0.distcp"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])

    done = _run(workdir)

    assert f"checkpoint {newest} could not be read" in done.stderr
    assert "is truncated" in done.stderr
    _assert_identical(_weights(workdir), _weights(plain_reference))
    resumed = _batches(workdir, 0)
    assert [r["iteration"] for r in resumed[-5:]] == [6, 7, 8, 9, 10]


@SHARES_PLAIN_REFERENCE
@pytest.mark.parametrize("processes", [1, 3])
def test_checkpoint_of_two_processes_resumes_on_another_number(
    processes: int,
    plain_reference: pathlib.Path,
    plain_killed: pathlib.Path,
    tmp_path: pathlib.Path,
) -> None:
    workdir = _copy(plain_killed, tmp_path / "run")
    # One process has no process group: its model is not sharded, and it loads the
    # shards as full tensors; it also reads them into a state_dict written by hand.
    options = ["--explicit-state"] if processes == 1 else []

    done = _run(workdir, *options, processes=processes)

    assert "the checkpoint was written by 2 process(es)" in done.stderr
    result = json.loads((workdir / "result.json").read_text())
    assert result["world_size"] == processes
    assert result["sharded"] == (
        [] if processes == 1 else ["<root>", "blocks.0", "blocks.1", "blocks.2"]
    )
    # The same global batches, so the same weights up to float rounding.
    assert _samples_after(workdir, 7) == _samples_after(plain_reference, 7)
    _assert_close(_weights(workdir), _weights(plain_reference))


@SHARES_PLAIN_REFERENCE
def test_testing_loads_the_newest_sharded_checkpoint(plain_reference: pathlib.Path) -> None:
    net = shard_job.Net()
    net.load_state_dict(_weights(plain_reference))
    samples = shard_job.samples(8, seed=5)
    tested: dict[int, float] = {}
    for rank in (0, 1):
        for line in (plain_reference / f"tested{rank}.jsonl").read_text().splitlines():
            record = json.loads(line)
            tested.update(zip(record["ids"], record["outputs"], strict=True))
    assert sorted(tested) == list(range(8))
    with torch.no_grad():
        expected = net(samples.x).flatten()
    torch.testing.assert_close(torch.tensor([tested[i] for i in range(8)]), expected)


@SHARES_PLAIN_REFERENCE
def test_full_state_export_loads_into_the_unsharded_network(
    plain_reference: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    newest = hlt.find_last_checkpoint(_folder(plain_reference))
    assert newest is not None

    exported = hlt.export_full_checkpoint(newest, tmp_path / "full.pth")

    hlt.register_trainer_types_for_safe_load()
    contents = torch.load(exported, weights_only=True)
    assert contents["training_state"].current_iteration == shard_job.TOTAL_ITERATIONS
    assert len(contents["ranks"]) == 2
    assert "sharded_parts" not in contents
    net = shard_job.Net()
    net.load_state_dict(contents["model"]["net"])
    _assert_identical(net.state_dict(), _weights(plain_reference))
    moments = contents["model"]["optimizer"]["state"][0]["exp_avg"]
    assert moments.shape == net.blocks[0].norm.weight.shape
    assert type(moments) is torch.Tensor

    onnx = pytest.importorskip("onnx")
    from helios.onnx import export_to_onnx

    x = torch.randn(2, shard_job.WIDTH)
    export_to_onnx(net, x, tmp_path / "net.onnx", validate_output=True)
    onnx.checker.check_model(str(tmp_path / "net.onnx"))


@SHARES_PLAIN_REFERENCE
@pytest.mark.parametrize("processes", [1, 2])
def test_exported_checkpoint_resumes_sharded_or_not(
    processes: int,
    plain_reference: pathlib.Path,
    plain_killed: pathlib.Path,
    tmp_path: pathlib.Path,
) -> None:
    workdir = _copy(plain_killed, tmp_path / "run")
    folder = _folder(workdir)
    newest = folder / "sharded_epoch_2_iter_6.dcp"
    hlt.export_full_checkpoint(newest)
    for path in folder.glob("*.dcp"):
        shutil.rmtree(path)
    assert hlt.find_last_checkpoint(folder) == folder / "sharded_epoch_2_iter_6.pth"

    _run(workdir, processes=processes)

    if processes == 2:  # every rank takes its shards of the full tensors: nothing changes
        _assert_identical(_weights(workdir), _weights(plain_reference))
    else:
        _assert_close(_weights(workdir), _weights(plain_reference))


@SHARES_PLAIN_REFERENCE
def test_replicated_checkpoint_resumes_sharded(
    plain_reference: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    workdir = tmp_path / "run"
    done = _run(workdir, "--replicate", "--kill-at", "7", expect_ok=False)
    assert done.returncode != 0
    newest = hlt.find_last_checkpoint(_folder(workdir))
    assert newest is not None
    assert newest.name == "sharded_epoch_2_iter_6.pth"

    _run(workdir)  # the same job, now sharding its network

    assert json.loads((workdir / "result.json").read_text())["sharded"] != []
    assert hlt.find_last_checkpoint(_folder(workdir)).suffix == ".dcp"  # type: ignore[union-attr]
    _assert_close(_weights(workdir), _weights(plain_reference))


def test_meta_device_network_and_fp16_scaler_resume_bit_identical(
    tmp_path: pathlib.Path,
) -> None:
    # One job (3 launches) for two things that must resume exactly: a network built on the
    # meta device, sharded, then materialised; and fp16-mixed's gradient scaler (a checkpoint
    # part of its own), which checks the sharded gradients for inf/NaN across the ranks and
    # whose scale resumes with the shards.
    options = ["--meta-init", "--precision", "fp16-mixed"]
    reference = tmp_path / "reference"
    _run(reference, *options)
    workdir = tmp_path / "run"
    _run(workdir, *options, "--kill-at", "7", expect_ok=False)
    newest = hlt.find_last_checkpoint(_folder(workdir))
    assert newest is not None
    hlt.register_trainer_types_for_safe_load()
    scaler = io.read_sharded_contents(newest)["precision"]["scaler"]
    assert scaler["scale"] < 2.0**16  # steps were skipped: the resume depends on the scale

    _run(workdir, *options)

    result = json.loads((workdir / "result.json").read_text())
    assert result["sharded"] == ["<root>", "blocks.0", "blocks.1", "blocks.2"]
    assert result["forward_dtype"] == "torch.float16"
    _assert_identical(_weights(workdir), _weights(reference))


def test_shards_the_trainer_cannot_find_fail_the_save_on_every_rank(
    tmp_path: pathlib.Path,
) -> None:
    done = _run(tmp_path, "--hidden-network", expect_ok=False)

    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert "hold DTensor shards, but helios did not find a sharded network" in output
    assert "['model']" in output
    assert output.count("did not find a sharded network") >= 2  # rank 0 and rank 1
    assert not list(_folder(tmp_path).glob("*_iter_*"))


def test_bf16_mixed_computes_in_bf16_and_keeps_float32_weights(tmp_path: pathlib.Path) -> None:
    _run(tmp_path, "--precision", "bf16-mixed")

    result = json.loads((tmp_path / "result.json").read_text())
    assert result["forward_dtype"] == "torch.bfloat16"
    # FSDP2's policy gathers the weights in bf16 (autocast alone would leave them float32).
    assert result["forward_weight_dtype"] == "torch.bfloat16"
    weights = _weights(tmp_path)
    assert {w.dtype for w in weights.values()} == {torch.float32}
    assert all(torch.isfinite(w).all() for w in weights.values())


@SHARES_DROPOUT_REFERENCE
def test_async_sharded_saves_run_in_the_background_and_resume_bit_identical(
    dropout_reference: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    # chkpt_async=True with a sharded model: Distributed Checkpoint's asynchronous save on a
    # process group of its own, rank 0 committing once every shard is written; a SIGKILL
    # (iteration 7 starts while the save of iteration 6 may still be in flight) leaves the
    # previous checkpoints whole.
    workdir = tmp_path / "run"
    options = ("--dropout", "0.2", "--async-save", "--keep-last", "2")
    done = _run(workdir, *options, "--kill-at", "7", expect_ok=False)
    assert "written synchronously" not in done.stdout + done.stderr
    folder = _folder(workdir)
    newest = hlt.find_last_checkpoint(folder)
    assert newest is not None and newest.name in (
        "sharded_epoch_2_iter_5.dcp",
        "sharded_epoch_2_iter_6.dcp",
    )
    _run(workdir, *options)
    _assert_identical(_weights(workdir), _weights(dropout_reference))
    kept = sorted(p.name for p in folder.glob("*.dcp"))
    assert kept == ["sharded_epoch_3_iter_10.dcp", "sharded_epoch_3_iter_9.dcp"]
    assert not list(folder.glob(".*.tmp"))


@SHARES_DROPOUT_REFERENCE
def test_sharded_run_in_an_object_store_resumes_bit_identical_on_an_empty_disk(
    dropout_reference: pathlib.Path, tmp_path: pathlib.Path, s3_bucket: str, s3_env: Any
) -> None:
    # The shards go to S3 through Distributed Checkpoint over fsspec, in the background; the
    # job is SIGKILLed when an iteration drawn at random starts, the previous iteration's
    # upload then in flight; the resumed run has a fresh working folder (nothing local
    # survives).
    import random

    kill_at = random.Random().randint(4, 8)
    print(f"killing the job when iteration {kill_at} starts")
    root = f"{s3_bucket}/runs"
    env = {**os.environ, **s3_env.environment()}
    options = ("--dropout", "0.2", "--chkpt-root", root, "--keep-last", "2")
    done = _run(tmp_path / "killed", *options, "--kill-at", str(kill_at), expect_ok=False, env=env)
    assert done.returncode != 0
    folder = f"{root}/{shard_job.SAVE_NAME}"
    newest = hlt.find_last_checkpoint(folder)
    assert newest is not None
    assert newest.endswith((f"_iter_{kill_at - 2}.dcp", f"_iter_{kill_at - 1}.dcp"))
    hlt.checkpoint.read_checkpoint(newest)  # committed means complete
    fresh = tmp_path / "fresh"
    _run(fresh, *options, env=env)
    _assert_identical(_weights(fresh), _weights(dropout_reference))
    assert hlt.find_last_checkpoint(folder) == f"{folder}/sharded_epoch_3_iter_10.dcp"
    exported = sharded.export_full_checkpoint(f"{folder}/sharded_epoch_3_iter_10.dcp")
    assert exported == f"{folder}/sharded_epoch_3_iter_10.pth"
    _assert_identical(hlt.checkpoint.read_checkpoint(exported)["model"]["net"], _weights(fresh))
