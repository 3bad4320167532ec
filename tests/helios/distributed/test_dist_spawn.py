"""The spawn path of ``Trainer(gpus=[0, 1, ...])``, as far as a machine without GPUs allows.

``Trainer(gpus=[...])`` needs CUDA, so the argument checks run with a faked CUDA device
count, and the spawning itself runs through ``dist_job.py spawn``: the Trainer's spawn
function and per-rank worker on 2 CPU processes (gloo) instead of 2 GPUs (NCCL).
"""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
import sys
from typing import Any

import pytest
import torch

import helios.trainer as hlt
from helios.trainer import launch

pytestmark = pytest.mark.slow

JOB_PATH = pathlib.Path(__file__).with_name("dist_job.py")
REPO_ROOT = pathlib.Path(__file__).resolve().parents[3]
# The tests that read the module's spawned job run on one xdist worker, so it runs once.
SHARES_SPAWNED_RUN = pytest.mark.xdist_group("dist_spawn_spawned")
TORCHRUN_ENV = {
    "LOCAL_RANK": "1",
    "RANK": "3",
    "GROUP_RANK": "1",
    "ROLE_RANK": "3",
    "LOCAL_WORLD_SIZE": "2",
    "WORLD_SIZE": "4",
    "ROLE_WORLD_SIZE": "4",
    "MASTER_ADDR": "localhost",
    "MASTER_PORT": "29500",
    "TORCHELASTIC_RESTART_COUNT": "0",
    "TORCHELASTIC_RUN_ID": "none",
}


@pytest.fixture
def four_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend that CUDA is available with 4 devices (nothing touches them)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    for name in TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_several_gpus_without_cuda_are_rejected() -> None:
    with pytest.raises(RuntimeError, match=r"CUDA was requested .*gpus=\[0, 1\]"):
        hlt.Trainer(gpus=[0, 1])


@pytest.mark.usefixtures("four_gpus")
def test_several_gpus_make_a_spawned_run() -> None:
    trainer = hlt.Trainer(gpus=[2, 3])
    assert trainer.is_distributed and launch.use_spawn(trainer)
    assert trainer.gpu_ids == [2, 3]
    assert trainer.device == torch.device("cuda", 2)
    assert trainer.queue is None
    # Rank 1 runs on the second listed GPU, and checkpoints of any listed GPU map onto it.
    trainer.local_rank = 1
    assert trainer.device == torch.device("cuda", 3)
    assert trainer._map_loc == {"cuda:2": "cuda:3", "cuda:3": "cuda:3", "cuda:0": "cuda:3"}
    with pytest.raises(ValueError, match=r"local_rank=2 has no GPU: gpus=\[2, 3\]"):
        trainer.local_rank = 2

    single = hlt.Trainer(gpus=[1])
    assert not single.is_distributed and not launch.use_spawn(single)


@pytest.mark.usefixtures("four_gpus")
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"gpus": [0, 0]}, r"gpus contains duplicate ids: \[0, 0\]"),
        ({"gpus": [1, 4]}, r"gpus=\[1, 4\] contains ids \[4\] that are not valid"),
        ({"gpus": [0, 1], "use_cpu": True}, r"cannot request CPU and GPU training"),
    ],
)
def test_bad_gpu_lists_are_rejected(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        hlt.Trainer(**kwargs)


@pytest.mark.usefixtures("four_gpus")
def test_torchrun_joins_its_group_instead_of_spawning(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in TORCHRUN_ENV.items():
        monkeypatch.setenv(name, value)
    on_gpus = hlt.Trainer()
    assert on_gpus.is_distributed and not launch.use_spawn(on_gpus)
    on_cpu = hlt.Trainer(use_cpu=True)
    assert on_cpu.is_distributed and not launch.use_spawn(on_cpu)
    assert on_cpu.device == torch.device("cpu") and on_cpu.gpu_ids == []
    with pytest.raises(ValueError, match=r"torchrun started 2 processes .* gpus=\[0\]"):
        hlt.Trainer(gpus=[0])


# -- spawning 2 CPU processes --------------------------------------------------------------


@pytest.fixture(scope="module")
def spawned(tmp_path_factory: pytest.TempPathFactory) -> tuple[pathlib.Path, str]:
    workdir = tmp_path_factory.mktemp("spawn")
    proc = subprocess.run(
        [sys.executable, str(JOB_PATH), str(workdir), "spawn"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # in order: the traceback goes to stderr
        text=True,
        timeout=240,
    )
    output = proc.stdout
    assert proc.returncode == 0, output
    return workdir, output


def _summary(output: str, case: str) -> dict[str, Any]:
    prefix = f"SPAWN {case} "
    lines = [line for line in output.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, output
    return json.loads(lines[0][len(prefix) :])  # type: ignore[no-any-return]


def _children_exited(folder: pathlib.Path) -> bool:
    pids = [int(path.name.rsplit("_", 1)[1]) for path in folder.glob("started_spawn_*")]
    assert len(pids) == 2
    return not any(pathlib.Path(f"/proc/{pid}").exists() for pid in pids)


@SHARES_SPAWNED_RUN
def test_spawned_ranks_train_together_and_send_results_through_the_queue(
    spawned: tuple[pathlib.Path, str],
) -> None:
    workdir, output = spawned
    summary = _summary(output, "ok")
    assert summary["returned"] is True
    # Seed 003: rank 0 puts its metrics into trainer.queue; the caller reads them.
    assert summary["queue"] == {"rank": 0, "stopped_at": 18}
    folder = workdir / "ok"
    weights = [torch.load(folder / f"final{r}_spawn.pt", weights_only=True) for r in (0, 1)]
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key])
    for rank in (0, 1):
        result = json.loads((folder / f"result{rank}_spawn.json").read_text())
        assert result["model"]["is_distributed"] is True
        assert result["model"]["rank"] == rank == result["trainer"]["rank"]
        assert result["plugin"]["rank"] == rank
        assert result["trainer"]["queue_is_none"] is False
        assert result["stopped_at"] == 18
    assert len(list((folder / "logs").iterdir())) == 1
    assert _children_exited(folder)


@SHARES_SPAWNED_RUN
def test_unlisted_exception_on_a_rank_is_shown_by_the_caller(
    spawned: tuple[pathlib.Path, str],
) -> None:
    workdir, output = spawned
    summary = _summary(output, "unlisted")
    assert summary["returned"] is False and summary["queue"] is None
    assert summary["seconds_after_failure"] < 60  # a hung collective waits 30 min
    # The calling process shows the rank's traceback and summary once on stderr (the rank
    # itself does not print it).
    traceback_line = "KeyError: 'planted failure on rank 1 at iteration 3'"
    unlisted_part = output.split("SPAWN ok ", 1)[1].split("SPAWN unlisted ", 1)[0]
    assert unlisted_part.count("Traceback (most recent call last)") == 1
    # Between them, the note naming the batch the step failed on.
    shown = re.escape(traceback_line) + r"\ntrain_step failed on a batch that is [^\n]*\n"
    assert len(re.findall(shown + "fit failed on rank 1 in ", unlisted_part)) == 1
    assert unlisted_part.count(f"in DistModel.train_step: {traceback_line}\n") == 1
    assert 'dist_job.py", line' in unlisted_part
    # It also lands in the run's log file.
    logs = list((workdir / "unlisted" / "logs").iterdir())
    assert len(logs) == 1 and traceback_line in logs[0].read_text()
    assert _children_exited(workdir / "unlisted")


@SHARES_SPAWNED_RUN
def test_listed_exception_on_a_rank_is_raised_by_the_caller(
    spawned: tuple[pathlib.Path, str],
) -> None:
    workdir, output = spawned
    summary = _summary(output, "listed")
    assert summary["raised"] == "KeyError"
    assert summary["message"] == "'planted failure on rank 1 at iteration 3'"
    assert summary["seconds_after_failure"] < 60  # a hung collective waits 30 min
    batch_notes = [n for n in summary["notes"] if n.startswith("train_step failed on a batch")]
    (note,) = [n for n in summary["notes"] if n not in batch_notes]
    assert len(batch_notes) == 1
    assert note.startswith("Raised on rank 1:\nTraceback (most recent call last):")
    assert "in train_step" in note
    assert _children_exited(workdir / "listed")
