"""pyblaze runs on the helios Trainer: plug-ins, checkpoints and distributed training."""

import os
import pathlib
import socket
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import helios.plugins as hlp
import pyblaze.nn as xnn


class ZeroInputs(hlp.Plugin):
    """Processes every training batch (zeroes the inputs) and counts them."""

    def __init__(self) -> None:
        super().__init__("zero_inputs")
        self.unique_overrides.training_batch = True
        self.batches = 0

    def setup(self) -> None:
        self.batches = 0

    def process_training_batch(self, batch, state):
        self.batches += 1
        x, y = batch
        return torch.zeros_like(x), y


class StopAfterBatches(hlp.Plugin):
    """Asks the trainer to stop once the counting plug-in has seen ``limit`` batches."""

    def __init__(self, counter: ZeroInputs, limit: int) -> None:
        super().__init__("stop_after")
        self.counter = counter
        self.limit = limit

    def setup(self) -> None:
        pass

    def should_training_stop(self) -> bool:
        return self.counter.batches >= self.limit


class LossRecorder(xnn.TrainingCallback):
    def before_training(self, model, num_epochs) -> None:
        self.losses = []
        self.ended = False

    def after_batch(self, *args) -> None:
        self.losses.append(args[0])

    def after_training(self) -> None:
        self.ended = True


def test_plugins_run_alongside_callbacks(make_model, dataset) -> None:
    model = make_model()
    zero, recorder = ZeroInputs(), LossRecorder()
    stop = StopAfterBatches(zero, limit=5)
    history = model.fit(
        dataset.loader(batch_size=10),
        val_data=dataset.loader(batch_size=30),
        epochs=4,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        loss=nn.CrossEntropyLoss(),
        callbacks=[recorder],
        plugins=[zero, stop],
        gpu=False,
    )
    # 3 batches per epoch; the stop plug-in ends training after the 5th batch (epoch 2).
    assert zero.batches == 5
    assert len(history) == 2
    assert len(history.micro_train_loss) == 5
    assert recorder.losses == history.micro_train_loss
    assert recorder.ended
    # With zeroed inputs only the bias learns, so the weights never change.
    assert torch.equal(model.fc.weight, make_model().fc.weight)


def test_plugins_are_checked(make_model, dataset) -> None:
    model = make_model()
    with pytest.raises(TypeError, match=r"plugins must derive from helios.plugins.Plugin"):
        model.fit(
            dataset.loader(batch_size=10),
            plugins=[object()],
            gpu=False,
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            loss=nn.MSELoss(),
        )


def test_checkpoints_resume_with_history(make_model, dataset, tmp_path: pathlib.Path) -> None:
    options = {"chkpt_root": tmp_path / "chkpt", "chkpt_frequency": 1}
    model = make_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)

    def run(epochs: int) -> xnn.History:
        return model.fit(
            dataset.loader(batch_size=10, shuffle=True),
            val_data=dataset.loader(batch_size=30),
            epochs=epochs,
            optimizer=optimizer,
            loss=nn.CrossEntropyLoss(),
            trainer_options=options,
            gpu=False,
        )

    first = run(2)
    files = sorted(p.name for p in (tmp_path / "chkpt").rglob("*.pth"))
    assert len(files) == 2
    resumed = run(3)  # continues from the newest checkpoint (epoch 2)
    assert len(resumed) == 3
    assert resumed.train_loss[:2] == first.train_loss
    assert resumed.val_loss[:2] == first.val_loss
    assert len(list((tmp_path / "chkpt").rglob("*.pth"))) == 3


SCRIPT = """
import json, os, sys
import torch
from torch import nn
from torch.utils.data import TensorDataset
import pyblaze.nn as xnn
import pyblaze.nn.functional as X  # noqa: N812 - the seed's name


class Net(xnn.Estimator, nn.Module):
    __engine__ = xnn.SupervisedEngine

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x)


class Counter(xnn.TrainingCallback):
    rank_zero_only = True

    def before_training(self, model, num_epochs):
        self.batches = 0

    def after_batch(self, *args):
        self.batches += 1


torch.manual_seed(0)
x = torch.randn(40, 4)
y = (x[:, 0] > 0).long()
data = TensorDataset(x, y)
model = Net()
counter = Counter()
history = model.fit(
    data.loader(batch_size=5),
    val_data=data.loader(batch_size=7),
    epochs=2,
    optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
    loss=nn.CrossEntropyLoss(),
    metrics={"accuracy": X.accuracy},
    callbacks=[counter],
    gpu=False,
)
with torch.no_grad():
    scores = model(x)
result = {
    "epochs": len(history),
    "micro": history.micro_train_loss,
    "val_loss": history.val_loss[-1],
    "expected_val_loss": nn.CrossEntropyLoss()(scores, y).item(),
    "counted": getattr(counter, "batches", None),
    "weights": model.fc.weight.flatten().tolist(),
}
with open(os.path.join(sys.argv[1], f"rank{os.environ['RANK']}.json"), "w") as f:
    json.dump(result, f)
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_distributed_cpu_training_under_torchrun(tmp_path: pathlib.Path) -> None:
    import json

    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(SCRIPT))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            f"--master_port={free_port()}",
            str(script),
            str(tmp_path),
        ],
        check=True,
        env=env,
        capture_output=True,
        timeout=110,
    )
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for result in ranks:
        assert result["epochs"] == 2
        # 40 samples shared by 2 ranks in batches of 5: 4 batches per rank and epoch.
        assert len(result["micro"]) == 8
        # Every rank validates on the whole set with the same (synchronised) weights.
        assert result["val_loss"] == pytest.approx(result["expected_val_loss"], rel=1e-5)
    assert ranks[0]["micro"] == pytest.approx(ranks[1]["micro"])  # averaged over ranks
    assert ranks[0]["weights"] == pytest.approx(ranks[1]["weights"])
    assert ranks[0]["counted"] == 8
    assert ranks[1]["counted"] is None  # rank_zero_only callbacks run on rank 0 only


@pytest.mark.parametrize("override", [None, True])
def test_trainer_summaries_are_off_unless_asked_for(make_model, dataset, capsys, override) -> None:
    model = make_model()
    options = {} if override is None else {"print_summaries": override}
    model.fit(
        dataset.loader(batch_size=10),
        val_data=dataset.loader(batch_size=30),
        epochs=2,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        loss=nn.CrossEntropyLoss(),
        trainer_options=options,
        gpu=False,
    )
    out = capsys.readouterr()
    printed = out.out + out.err
    # pyblaze's console keeps its 1.1.6 format: helios's per-validation lines only on request.
    assert ("Validation 0 (epoch 1" in printed) == (override is True)
