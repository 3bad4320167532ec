"""The process-group timeout (``HELIOS_DIST_TIMEOUT`` / ``init_dist(timeout=...)``) and the
rank names of models and plug-ins.

The timeout test runs this file as a script (``python <this file> OUT PORT``) for its 2 gloo
processes: rank 1 never joins rank 0's all-reduce, which must then fail after the timeout.
"""

import datetime
import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import pytest

import helios.model as hlm
import helios.trainer as hlt
from helios.core import distributed as hcd


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), ("", None), (" 2.5 ", datetime.timedelta(seconds=2.5)), ("600", 600.0)],
)
def test_timeout_from_environment(
    monkeypatch: pytest.MonkeyPatch, value: str | None, expected: object
) -> None:
    if value is None:
        monkeypatch.delenv(hcd.TIMEOUT_ENV_VAR, raising=False)
    else:
        monkeypatch.setenv(hcd.TIMEOUT_ENV_VAR, value)
    if isinstance(expected, float):
        expected = datetime.timedelta(seconds=expected)
    assert hcd.timeout_from_environment() == expected


@pytest.mark.parametrize("value", ["0", "-3", "ten", "nan", "inf"])
def test_timeout_from_environment_rejects(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(hcd.TIMEOUT_ENV_VAR, value)
    match = f"HELIOS_DIST_TIMEOUT must be a positive number of seconds, got '{value}'"
    with pytest.raises(ValueError, match=match):
        hcd.timeout_from_environment()
    # init_dist reads it before it joins anything.
    with pytest.raises(ValueError, match=match):
        hcd.init_dist("gloo", rank=0, world_size=1)


def test_init_dist_rejects_a_timeout_that_is_not_positive() -> None:
    with pytest.raises(ValueError, match="timeout must be a positive duration, got timeout=0:00"):
        hcd.init_dist("gloo", rank=0, world_size=1, timeout=datetime.timedelta(0))
    assert not hcd.is_dist_active()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_rank_waiting_for_a_missing_peer_fails_after_the_timeout(tmp_path: pathlib.Path) -> None:
    result = subprocess.run(
        [sys.executable, __file__, str(tmp_path), str(_free_port())],
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((tmp_path / "rank0.json").read_text())
    assert report["error"] is not None and "Timed out" in report["error"]
    assert 4.5 <= report["waited"] < 30.0


def _worker(rank: int, out: pathlib.Path, port: int) -> None:
    hcd.init_dist(
        "gloo", rank=rank, world_size=2, master_port=port, timeout=datetime.timedelta(seconds=5)
    )
    if rank == 1:
        time.sleep(20)  # never joins: as if cut off
        return
    import torch

    start = time.monotonic()
    error = None
    try:
        hcd.all_reduce_tensors(torch.ones(1))
    except RuntimeError as exc:
        error = str(exc)
    waited = time.monotonic() - start
    (out / "rank0.json").write_text(json.dumps({"error": error, "waited": waited}))
    # A group whose collective failed cannot be torn down cleanly (torch aborts the process
    # at exit, "terminate called without an active exception"); leave at once.
    os._exit(0)


def _main() -> None:
    import torch.multiprocessing as mp

    out, port = pathlib.Path(sys.argv[1]), int(sys.argv[2])
    context = mp.get_context("spawn")
    procs = [context.Process(target=_worker, args=(rank, out, port)) for rank in range(2)]
    for proc in procs:
        proc.start()
    procs[0].join(60)
    procs[1].kill()
    procs[1].join(10)
    os._exit(0 if procs[0].exitcode == 0 else 1)


class _Model(hlm.Model):
    def setup(self, fast_init: bool = False) -> None:
        pass


def test_models_and_plugins_name_their_global_and_local_rank() -> None:
    model = _Model("ranks")
    assert (model.rank, model.local_rank, model.global_rank) == (0, 0, 0)
    trainer = hlt.Trainer(use_cpu=True, print_banner=False)
    trainer.rank = 3  # what the launch sets: the global rank
    model.trainer = trainer
    model.rank = 1  # what the trainer sets: the local rank (as in Helios 1.2.7)
    assert (model.rank, model.local_rank, model.global_rank) == (1, 1, 0)  # not distributed
    model.is_distributed = True
    assert (model.rank, model.local_rank, model.global_rank) == (1, 1, 3)


if __name__ == "__main__":
    _main()
