"""Distributed helpers, single process and for real on 2 gloo processes.

The multi-process test runs this file as a script (``python <this file> OUT PORT``), which
spawns the workers: spawned children must import the worker function by module name, which
a test module loaded by pytest cannot offer.
"""

import contextlib
import json
import os
import pathlib
import re
import socket
import subprocess
import sys

import pytest
import torch

from helios.core import distributed as hcd
from helios.core import logging as hcl

TORCHRUN_VARS = [
    "LOCAL_RANK",
    "RANK",
    "GROUP_RANK",
    "ROLE_RANK",
    "LOCAL_WORLD_SIZE",
    "WORLD_SIZE",
    "ROLE_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RESTART_COUNT",
    "TORCHELASTIC_RUN_ID",
]


def test_is_using_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in TORCHRUN_VARS:
        monkeypatch.setenv(var, "0")
    assert hcd.is_using_torchrun()
    monkeypatch.delenv("TORCHELASTIC_RUN_ID")
    assert not hcd.is_using_torchrun()


def test_single_process_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    assert not hcd.is_dist_active()
    assert hcd.get_dist_info() == hcd.DistributedInfo(0, 0, 1, 1)
    assert hcd.get_local_rank() == 0
    assert hcd.get_global_rank() == 0
    assert hcd.get_world_size() == 1
    assert hcd.get_local_world_size() == 1
    t = torch.tensor([1.0, 2.0])
    assert hcd.all_reduce_mean(t) is t
    assert torch.equal(t, torch.tensor([1.0, 2.0]))
    obj = {"a": [1]}
    assert hcd.broadcast_object(obj) is obj
    hcd.safe_barrier()
    hcd.shutdown_dist()
    hcd.global_print("g", 1, sep="-")
    hcd.local_print("l", end="!\n")
    assert capsys.readouterr().out == "g-1\nl!\n"
    with pytest.raises(RuntimeError, match="process group has not been initialized"):
        hcd.gather_into_tensor(t, (2,))
    with pytest.raises(RuntimeError, match="process group has not been initialized"):
        hcd.all_reduce_tensors([1, 2])


def test_all_reduce_mean_rejects_integer_tensor() -> None:
    with pytest.raises(TypeError, match=r"floating-point tensor, got torch\.int64"):
        hcd.all_reduce_mean(torch.tensor([1, 2]))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rank": 0}, r"rank=0, world_size=None"),
        ({"world_size": 2}, r"rank=None, world_size=2"),
        ({"rank": 2, "world_size": 2}, r"0 <= rank < world_size.*rank=2, world_size=2"),
        ({"rank": 0, "world_size": 1, "master_port": 70000}, r"master_port=70000"),
    ],
)
def test_init_dist_rejects_bad_arguments(kwargs: dict[str, int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        hcd.init_dist("gloo", **kwargs)
    assert not hcd.is_dist_active()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("localhost", 0))
        return int(sock.getsockname()[1])


def test_single_rank_group_uses_master_port_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("LOCAL_RANK", "RANK", "LOCAL_WORLD_SIZE", "WORLD_SIZE", "MASTER_ADDR"):
        monkeypatch.delenv(var, raising=False)
    port = str(_free_port())
    monkeypatch.setenv("MASTER_PORT", port)
    hcd.init_dist("gloo", rank=0, world_size=1)
    try:
        assert hcd.is_dist_active()
        assert os.environ["MASTER_PORT"] == port
        assert os.environ["MASTER_ADDR"] == "localhost"
        assert hcd.get_dist_info() == hcd.DistributedInfo(0, 0, 1, 1)
        assert hcd.all_reduce_tensors([2, 3]).tolist() == [2, 3]
        assert hcd.all_reduce_mean(torch.tensor([1.5])).tolist() == [1.5]
        assert hcd.gather_into_tensor(torch.tensor([[1, 2]]), (1, 2)).tolist() == [[1, 2]]
    finally:
        hcd.shutdown_dist()
    assert not hcd.is_dist_active()


def _worker(rank: int, out_dir: str, port: int) -> None:
    out = pathlib.Path(out_dir)
    os.environ.pop("MASTER_PORT", None)
    hcd.init_dist("gloo", rank=rank, world_size=2, master_port=port)
    results: dict[str, object] = {
        "active": hcd.is_dist_active(),
        "env": [os.environ[v] for v in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT")],
        "info": list(vars(hcd.get_dist_info()).values()),
        "ranks": [hcd.get_local_rank(), hcd.get_global_rank()],
        "world": [hcd.get_world_size(), hcd.get_local_world_size()],
    }
    results["sum"] = hcd.all_reduce_tensors(torch.tensor([rank + 1.0, 10.0])).tolist()
    listed = hcd.all_reduce_tensors([rank, 1])
    results["list_sum"] = [listed.tolist(), str(listed.device)]
    stacked = hcd.all_reduce_tensors([torch.tensor(rank * 1.0), torch.tensor(2.0)])
    results["stack_sum"] = stacked.tolist()
    results["max"] = hcd.all_reduce_tensors(
        torch.tensor([rank]), op=torch.distributed.ReduceOp.MAX
    ).tolist()
    results["mean"] = hcd.all_reduce_mean(torch.tensor([rank * 2.0, 4.0])).tolist()
    results["gather"] = hcd.gather_into_tensor(torch.tensor([rank, rank + 10]), (4,)).tolist()
    results["gather2d"] = hcd.gather_into_tensor(torch.tensor([rank]), (2, 1)).tolist()
    results["bcast"] = hcd.broadcast_object({"from": rank, "items": [rank]})
    results["bcast1"] = hcd.broadcast_object(f"r{rank}", src=1)

    with (out / f"stdout{rank}.txt").open("w") as f, contextlib.redirect_stdout(f):
        hcd.global_print("global from", rank)
        hcd.global_print("global1 from", rank, global_rank=1)
        hcd.local_print("local from", rank)
        hcd.local_print("local1 from", rank, local_rank=1)
        # Rank 0 picks (and broadcasts) the log name; only rank 0 logs info/warnings.
        hcl.create_default_loggers(enable_tensorboard=True)
        hcl.setup_default_loggers("dist", log_root=out / "logs", runs_root=out / "runs")
        root = hcl.get_root_logger()
        results["log_file"] = str(root.log_file)
        root.info(f"info from {rank}")
        root.warning(f"warning from {rank}")
        hcd.safe_barrier()
        root.error(f"error from {rank}")
        writer = hcl.get_tensorboard_writer()
        assert writer is not None
        writer.add_scalar("x", float(rank), 0)
        hcd.safe_barrier()
        hcl.close_default_loggers()

    try:
        hcd.gather_into_tensor(torch.tensor([1.0]), (3,))
    except ValueError as exc:
        results["gather_error"] = str(exc)
    hcd.safe_barrier()
    hcd.shutdown_dist()
    results["active_after"] = hcd.is_dist_active()
    (out / f"result{rank}.json").write_text(json.dumps(results))


@pytest.mark.slow
def test_two_gloo_processes(tmp_path: pathlib.Path) -> None:
    proc = subprocess.run(
        [sys.executable, __file__, str(tmp_path), str(_free_port())],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    r0, r1 = (json.loads((tmp_path / f"result{r}.json").read_text()) for r in (0, 1))
    port = r0["env"][3]
    for rank, res in enumerate((r0, r1)):
        assert res["active"] and not res["active_after"]
        assert res["env"] == [str(rank), str(rank), "2", port]
        assert res["info"] == [rank, rank, 2, 2]
        assert res["ranks"] == [rank, rank]
        assert res["world"] == [2, 2]
        assert res["sum"] == [3.0, 20.0]
        assert res["list_sum"] == [[1, 2], "cpu"]
        assert res["stack_sum"] == [1.0, 4.0]
        assert res["max"] == [1]
        assert res["mean"] == [1.0, 4.0]
        assert res["gather"] == [0, 10, 1, 11]
        assert res["gather2d"] == [[0], [1]]
        assert res["bcast"] == {"from": 0, "items": [0]}
        assert res["bcast1"] == "r1"
        assert "size=(3,) holds 3 elements, expected" in res["gather_error"]
        assert res["log_file"] == r0["log_file"]

    stdout0 = (tmp_path / "stdout0.txt").read_text().splitlines()
    assert stdout0[:2] == ["global from 0", "local from 0"]
    assert len(stdout0) == 4
    assert re.fullmatch(r"\[.+\] \[WARNING\]: warning from 0", stdout0[2])
    assert re.fullmatch(r"\[.+\] \[ERROR\]: error from 0", stdout0[3])
    stdout1 = (tmp_path / "stdout1.txt").read_text()
    assert stdout1.startswith("global1 from 1\nlocal1 from 1\n")
    assert "warning from 1" not in stdout1 and "error from 1" in stdout1

    log_file = pathlib.Path(r0["log_file"])
    assert log_file.parent == tmp_path / "logs"
    text = log_file.read_text(encoding="utf-8")
    assert "info from 0" in text and "warning from 0" in text and "error from 0" in text
    assert "info from 1" not in text and "warning from 1" not in text
    assert "error from 1" in text
    # Only rank 0 writes TensorBoard events, into one run folder named like the log file.
    runs = list((tmp_path / "runs").iterdir())
    assert runs == [tmp_path / "runs" / log_file.stem]
    assert len(list(runs[0].glob("events.out.tfevents.*"))) == 1


if __name__ == "__main__":
    torch.multiprocessing.spawn(_worker, args=(sys.argv[1], int(sys.argv[2])), nprocs=2)
