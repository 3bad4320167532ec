"""``fit(shard=True)``: the model sharded with FSDP2 over the processes of a distributed run.

The distributed tests run ``shard_fit_job.py`` under ``torchrun`` on two CPU processes
(gloo), sharded and replicated (DDP), and compare them.
"""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

import pyblaze.nn as xnn
from pyblaze_toys import Crash, three_classes

JOB = pathlib.Path(__file__).with_name("shard_fit_job.py")
SRC = pathlib.Path(__file__).resolve().parents[3] / "src"
# The tests that read the module's reference jobs run on one xdist worker, so they run once.
SHARES_REFERENCE = pytest.mark.xdist_group("pyblaze_shard_reference")


class Net(xnn.Estimator, nn.Module):
    __engine__ = xnn.SupervisedEngine

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
        self.drop = nn.Dropout(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.drop(x))


def _fit(shard: bool, root: pathlib.Path | None = None, *extra: Any) -> tuple[Any, Net, Any]:
    torch.manual_seed(0)
    model = Net()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    options = {} if root is None else {"chkpt_root": root, "chkpt_frequency": 1}
    history = model.fit(
        DataLoader(three_classes(40), batch_size=10, shuffle=True),
        val_data=DataLoader(three_classes(40), batch_size=20),
        epochs=4,
        optimizer=optimizer,
        loss=nn.CrossEntropyLoss(),
        callbacks=[xnn.EarlyStopping(metric="val_loss", patience=10), *extra],
        trainer_options=options,
        gpu=False,
        shard=shard,
    )
    return history, model, optimizer


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_shard_must_be_a_bool(value: Any) -> None:
    model = Net()
    with pytest.raises(TypeError, match=r"shard must be a bool, but received"):
        model.fit(
            DataLoader(three_classes(40), batch_size=10),
            epochs=1,
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            loss=nn.CrossEntropyLoss(),
            gpu=False,
            shard=value,
        )


@pytest.mark.slow
def test_one_process_trains_as_without_shard_and_resumes(tmp_path: pathlib.Path) -> None:
    plain, plain_model, _ = _fit(False)
    history, model, optimizer = _fit(True)
    assert history._epochs == plain._epochs
    for key, value in plain_model.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    assert all(type(p) is nn.Parameter for p in model.parameters())

    # Its checkpoints keep the history and callback states as a part of their own.
    with pytest.raises(RuntimeError, match="crash"):
        _fit(True, tmp_path, Crash(epoch=3))
    newest = max((tmp_path / "pyblaze_Net").glob("*.pth"), key=lambda p: p.stat().st_mtime)
    saved = torch.load(newest, map_location="cpu", weights_only=False)
    assert set(saved["model"]) == {"module", "optimizers"}
    assert [e["train_loss"] for e in saved["pyblaze_records"]["epochs"]] == plain.train_loss[:2]
    # A fit without shard refuses it with a clear message; with shard it resumes exactly.
    with pytest.raises(Exception, match="written by a fit with shard=True"):
        _fit(False, tmp_path)
    resumed, resumed_model, resumed_optimizer = _fit(True, tmp_path)
    assert resumed._epochs == plain._epochs
    for key, value in plain_model.state_dict().items():
        assert torch.equal(resumed_model.state_dict()[key], value), key
    saved_state = optimizer.state_dict()["state"]
    for index, state in resumed_optimizer.state_dict()["state"].items():
        assert torch.equal(state["exp_avg"], saved_state[index]["exp_avg"]), index
    assert len(saved_state) == len(list(model.parameters()))


# -- two processes under torchrun -------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return int(sock.getsockname()[1])


def _job(workdir: pathlib.Path, *args: str, processes: int = 2) -> subprocess.CompletedProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(SRC), *sys.path]),
    }
    launcher = (
        [
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={processes}",
            f"--master_port={_free_port()}",
        ]
        if processes > 1
        else []
    )
    return subprocess.run(
        [sys.executable, *launcher, str(JOB), str(workdir), *args],
        capture_output=True, text=True, timeout=240, env=env,
    )  # fmt: skip


def _results(workdir: pathlib.Path, ranks: int = 2) -> list[dict[str, Any]]:
    return [
        torch.load(workdir / f"result{rank}.pt", map_location="cpu", weights_only=False)
        for rank in range(ranks)
    ]


def _assert_same(
    left: dict[str, torch.Tensor], right: dict[str, torch.Tensor], exact: bool
) -> None:
    assert left.keys() == right.keys()
    for key, value in left.items():
        if exact:
            assert torch.equal(value, right[key]), key
        else:
            torch.testing.assert_close(value, right[key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    """The job run through, sharded and replicated, each followed by two more fits."""
    found = {}
    for mode in ("shard", "ddp"):
        workdir = tmp_path_factory.mktemp(mode)
        proc = _job(workdir, mode, "--more")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        found[mode] = _results(workdir)
    return found


@SHARES_REFERENCE
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sharded_fit_matches_the_replicated_one(reference: dict[str, Any]) -> None:
    sharded, replicated = reference["shard"], reference["ddp"]
    for rank in (0, 1):
        seen = sharded[rank]["seen"]
        # During the run the engine trains a sharded copy: DTensor parameters, each rank
        # holding half of the rows (torch.chunk: 4 of 8; the head's single row on rank 0).
        assert not seen["model_is_user_model"] and seen["engine_model_is_model"]
        for name, param in seen["params"].items():
            assert param["type"] == "DTensor", name
            rows = param["shape"][0]
            expected = (rows + 1) // 2 if rank == 0 else rows - (rows + 1) // 2
            assert param["local_shape"] == (expected, *param["shape"][1:]), name
        assert seen["optimizer_param"]["sharded"]
        assert seen["state"]["exp_avg"]["local_shape"] == (4, 8)
        assert seen["state"]["exp_avg_sq"]["sharded"]
        assert replicated[rank]["seen"]["params"]["head.weight"]["type"] == "Parameter"

        # Afterwards the user's model and optimizer are as they went in: the same
        # parameters, plain tensors, the optimizer training them again.
        result = sharded[rank]
        assert result["same_parameters"] and result["optimizer_params_are_model_params"]
        assert result["parameter_types"] == ["Parameter"]
        assert result["state_types"] == ["Tensor"]
        assert result["engine_model_is_model"]

        # Rank 0's initial weights (each rank drew its own), the same global batch: the
        # sharded fit ends where the replicated one does, and so do the fits after it
        # (a replicated one, then one with the job's mode), which take over the
        # optimizer state.
        assert len(result["history"]) == len(replicated[rank]["history"]) == 4
        for entry, other in zip(result["history"], replicated[rank]["history"], strict=True):
            assert entry.keys() == other.keys()
            for key, value in entry.items():
                assert value == pytest.approx(other[key], rel=1e-5), key
        for key in ("weights", "weights_after_1", "weights_after_2"):
            _assert_same(result[key], replicated[rank][key], exact=False)
            _assert_same(result[key], sharded[0][key], exact=True)


@SHARES_REFERENCE
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_killed_sharded_fit_resumes_bit_identical(
    tmp_path: pathlib.Path, reference: dict[str, Any]
) -> None:
    chkpt = tmp_path / "chkpt"
    killed = _job(tmp_path / "killed", "shard", "--chkpt", str(chkpt), "--kill-after", "3")
    assert killed.returncode != 0
    assert "SIGKILL" in killed.stdout + killed.stderr
    folder = chkpt / "pyblaze_Net"
    written = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
    assert written == ["pyblaze_Net_epoch_1_iter_4.dcp", "pyblaze_Net_epoch_2_iter_8.dcp"]
    assert {p.name for p in (folder / written[-1]).iterdir()} >= {
        ".metadata", "__0_0.distcp", "__1_0.distcp", "helios.pth",
    }  # fmt: skip

    resumed = _job(tmp_path / "resumed", "shard", "--chkpt", str(chkpt))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "Resuming training from checkpoint" in resumed.stdout + resumed.stderr
    expected = reference["shard"][0]
    for result in _results(tmp_path / "resumed"):
        assert result["history"] == expected["history"]
        _assert_same(result["weights"], expected["weights"], exact=True)
        assert result["parameter_types"] == ["Parameter"]

    # The finished run, run again, trains nothing; its weights still come back, on two
    # processes (gathered after fit) and on one (the shards joined into full tensors).
    for processes in (2, 1):
        again = _job(
            tmp_path / f"again{processes}", "shard", "--chkpt", str(chkpt), processes=processes
        )
        assert again.returncode == 0, again.stdout + again.stderr
        for result in _results(tmp_path / f"again{processes}", processes):
            assert result["world_size"] == processes
            assert result["seen"] == {}  # before_training never ran: nothing trained
            assert result["history"] == expected["history"]
            _assert_same(result["weights"], expected["weights"], exact=True)
            assert result["state_types"] == ["Tensor"]

    # A fit without shard=True refuses the sharded checkpoint before training.
    plain = _job(tmp_path / "plain", "ddp", "--chkpt", str(chkpt), processes=1)
    assert plain.returncode != 0
    assert "holds a sharded model" in plain.stderr and "resume it with shard=True" in plain.stderr
