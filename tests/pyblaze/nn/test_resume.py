"""A resumed pyblaze fit behaves as if never interrupted: callback states are checkpointed."""

from __future__ import annotations

import os
import pathlib
import signal

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

import pyblaze.nn as xnn
from pyblaze_toys import BatchCounter, Crash, LinearEstimator, three_classes


class Net(LinearEstimator):
    """The shared linear estimator, after dropout; its checkpoints go to ``pyblaze_Net``."""

    def __init__(self) -> None:
        super().__init__(dropout=0.2)


class Preempt(xnn.TrainingCallback):
    """Sends this process SIGTERM after one batch of one epoch (a scheduler's preemption)."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch = epoch, batch
        self._epoch = self._batch = 0

    def before_epoch(self, current: int, num_iterations: int) -> None:
        self._epoch, self._batch = current + 1, 0

    def after_batch(self, *args) -> None:
        self._batch += 1
        if (self._epoch, self._batch) == (self.epoch, self.batch):
            os.kill(os.getpid(), signal.SIGTERM)


def _run(root: pathlib.Path | str | None, *extra: xnn.TrainingCallback):
    """One ``fit`` as a fresh process would run it: new objects, the same seed."""
    torch.manual_seed(0)
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    # train_loss falls every epoch, so watching it for a rise stops after epoch 1 + patience:
    # a counter restarted by a resume would stop later.
    stopper = xnn.EarlyStopping(metric="train_loss", patience=3, minimize=False)
    options = {} if root is None else {"chkpt_root": root, "chkpt_frequency": 1}
    data = three_classes(40)
    history = model.fit(
        DataLoader(data, batch_size=10, shuffle=True),
        val_data=DataLoader(data, batch_size=20),
        epochs=20,
        optimizer=optimizer,
        loss=nn.CrossEntropyLoss(),
        callbacks=[stopper, xnn.LearningRateScheduler(scheduler), *extra],
        trainer_options=options,
        gpu=False,
    )
    return history, model, optimizer, stopper


def _entries(history: xnn.History) -> list[dict]:
    return [dict(entry) for entry in history._epochs]


@pytest.mark.slow
def test_a_crashed_fit_resumes_as_if_never_interrupted(tmp_path: pathlib.Path) -> None:
    whole, model, optimizer, stopper = _run(None)
    assert len(whole) == 4 and stopper.counter == 3  # stopped by EarlyStopping

    with pytest.raises(RuntimeError, match="crash"):
        _run(tmp_path, Crash(epoch=3))  # epochs 1-2 checkpointed
    resumed, model2, optimizer2, stopper2 = _run(tmp_path)
    assert _entries(resumed) == _entries(whole)
    assert (stopper2.epoch, stopper2.counter, stopper2.best) == (4, 3, whole.train_loss[0])
    assert optimizer2.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]
    for key, value in model.state_dict().items():
        assert torch.equal(model2.state_dict()[key], value), key

    # The finished, early-stopped run trains nothing when run again.
    counter = BatchCounter()
    again, model3, _, _ = _run(tmp_path, counter)
    assert counter.batches == 0
    assert _entries(again) == _entries(whole)
    for key, value in model.state_dict().items():
        assert torch.equal(model3.state_dict()[key], value), key


@pytest.mark.slow
def test_a_crashed_fit_resumes_from_an_object_store(s3_bucket: str) -> None:
    # chkpt_root in S3 (the test server); ModelSaverCallback writes its files there too.
    whole, model, _, _ = _run(None)
    saver = f"{s3_bucket}/models"
    with pytest.raises(RuntimeError, match="crash"):
        _run(f"{s3_bucket}/runs", Crash(epoch=3), xnn.ModelSaverCallback(saver, keep_last=1))
    resumed, model2, _, _ = _run(f"{s3_bucket}/runs", xnn.ModelSaverCallback(saver, keep_last=1))
    assert _entries(resumed) == _entries(whole)
    for key, value in model.state_dict().items():
        assert torch.equal(model2.state_dict()[key], value), key
    import fsspec

    fs, path = fsspec.core.url_to_fs(saver)
    names = [p.rsplit("/", 1)[1] for p in fs.ls(path, refresh=True)]
    assert "model_epoch-3.pt" in names and "model_epoch-2.pt" not in names  # keep_last=1
    state = torch.load(fs.open(f"{path}/model_epoch-3.pt", "rb"), weights_only=True)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_callback_states_are_in_the_checkpoint(tmp_path: pathlib.Path) -> None:
    torch.manual_seed(0)
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    beta = torch.tensor(1.0)
    halve = xnn.ParameterScheduler(beta, lambda value, epoch: value / 2)
    model.fit(
        DataLoader(three_classes(40), batch_size=10),
        epochs=2,
        optimizer=optimizer,
        loss=nn.CrossEntropyLoss(),
        callbacks=[xnn.EarlyStopping(metric="train_loss", patience=5), halve],
        trainer_options={"chkpt_root": tmp_path, "chkpt_frequency": 1},
        gpu=False,
    )
    newest = max((tmp_path / "pyblaze_Net").glob("*.pth"), key=lambda p: p.stat().st_mtime)
    saved = torch.load(newest, map_location="cpu", weights_only=False)["model"]["callbacks"]
    assert set(saved) == {"0.SupervisedEngine", "1.EarlyStopping", "2.ParameterScheduler"}
    assert saved["1.EarlyStopping"]["epoch"] == 2
    assert saved["2.ParameterScheduler"]["value"] == 0.25

    # Resumed for one more epoch with a fresh parameter: its value comes back first.
    fresh = torch.tensor(1.0)
    torch.manual_seed(0)
    model = Net()
    model.fit(
        DataLoader(three_classes(40), batch_size=10),
        epochs=3,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        loss=nn.CrossEntropyLoss(),
        callbacks=[
            xnn.EarlyStopping(metric="train_loss", patience=5),
            xnn.ParameterScheduler(fresh, lambda value, epoch: value / 2),
        ],
        trainer_options={"chkpt_root": tmp_path, "chkpt_frequency": 1},
        gpu=False,
    )
    assert fresh.item() == 0.125


SCRIPT = """
import json, os, signal, sys
sys.path.insert(0, {tests!r})
from test_resume import Preempt, _run, xnn

class Kill(xnn.TrainingCallback):
    def __init__(self):
        self.seen = 0
    def after_epoch(self, metrics):
        self.seen += 1
        if sys.argv[2] != "term" and self.seen == int(sys.argv[2]):
            os.kill(os.getpid(), signal.SIGKILL)

root = None if sys.argv[1] == "-" else sys.argv[1]
extra = Preempt(epoch=3, batch=2) if sys.argv[2] == "term" else Kill()
history, _, _, stopper = _run(root, extra)
print(json.dumps({{"epochs": history._epochs, "counter": stopper.counter}}))
"""


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_sigkilled_or_preempted_fit_resumes_as_if_never_interrupted(
    tmp_path: pathlib.Path,
) -> None:
    import json
    import subprocess
    import sys

    script = tmp_path / "job.py"
    script.write_text(SCRIPT.format(tests=str(pathlib.Path(__file__).parent)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}

    def job(root: str, kill_at: int | str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, str(script), root, str(kill_at)],
            capture_output=True, text=True, timeout=100, env=env,
        )  # fmt: skip

    def finished(root: pathlib.Path | None) -> dict:
        """A fit run to its end in this process, as the job script prints it."""
        history, _, _, stopper = _run(root)
        return json.loads(json.dumps({"epochs": history._epochs, "counter": stopper.counter}))

    # The uninterrupted run and the resumed ones need no process of their own; the runs
    # that are killed or preempted do (the preemption's signal handling would stay in the
    # test process).
    expected = finished(None)
    assert len(expected["epochs"]) == 4
    killed = job(str(tmp_path / "chkpt"), 3)
    assert killed.returncode == -signal.SIGKILL
    assert finished(tmp_path / "chkpt") == expected

    # SIGTERM (a scheduler's preemption) after batch 2 of epoch 3: a checkpoint inside the
    # epoch, exit code 143; the resumed run keeps the epoch's batch losses.
    preempted = job(str(tmp_path / "term"), "term")
    assert preempted.returncode == 128 + signal.SIGTERM, preempted.stderr
    assert finished(tmp_path / "term") == expected
