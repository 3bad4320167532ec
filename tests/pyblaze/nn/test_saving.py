"""pyblaze writes every file atomically, and reaches helios' checkpoint retention.

The kill tests run a real process that hangs in the middle of a write (``os.fsync`` of the
temporary file, or ``torch.save`` after half the bytes) and SIGKILL it there.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from torch import nn

import pyblaze.nn as xnn

REPO_ROOT = pathlib.Path(__file__).resolve().parents[3]

_PRELUDE = textwrap.dedent(
    """
    import io, os, pathlib, sys, time
    import torch
    from torch import nn
    import pyblaze.nn as xnn

    workdir = pathlib.Path(sys.argv[1])

    class MLPConfig(xnn.Config):
        in_dim: int
        width: int = 8

    class MLP(xnn.Configurable, xnn.Estimator, nn.Module):
        __config__ = MLPConfig
        __engine__ = xnn.SupervisedEngine

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.fc = nn.Linear(self.in_dim, self.width)

        def forward(self, x):
            return self.fc(x)

    def hang_in(what):
        (workdir / f"hanging_in_{what}").touch()
        time.sleep(120)

    def hang_in_fsync_after(count):
        real, calls = os.fsync, [0]
        def fsync(fd):
            calls[0] += 1
            if calls[0] > count:
                hang_in("fsync")
            real(fd)
        os.fsync = fsync

    def hang_in_torch_save_after(count):
        real, calls = torch.save, [0]
        def save(obj, f, *args, **kwargs):
            calls[0] += 1
            if calls[0] <= count or not hasattr(f, "write"):
                return real(obj, f, *args, **kwargs)
            buffer = io.BytesIO()
            real(obj, buffer, *args, **kwargs)
            f.write(buffer.getvalue()[:100])
            f.flush()
            hang_in("torch_save")
        torch.save = save
    """
)


def _run_until_hanging(tmp_path: pathlib.Path, body: str) -> None:
    script = _PRELUDE + textwrap.dedent(body)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")}
    process = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob("hanging_in_*")):
            if process.poll() is not None:
                out = process.stdout.read().decode() if process.stdout else ""
                pytest.fail(f"the process ended before hanging:\n{out}")
            assert time.monotonic() < deadline
            time.sleep(0.01)
        os.kill(process.pid, signal.SIGKILL)
        assert process.wait(timeout=60) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _without_temporaries(folder: pathlib.Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith((".", "hanging")))


@pytest.mark.slow
def test_config_save_killed_mid_write_keeps_the_previous_file(tmp_path: pathlib.Path) -> None:
    _run_until_hanging(
        tmp_path,
        """
        MLPConfig(in_dim=3).save(workdir / "config")
        hang_in_fsync_after(0)
        MLPConfig(in_dim=5, width=1000).save(workdir / "config")
        """,
    )
    assert json.loads((tmp_path / "config.json").read_text()) == {"in_dim": 3, "width": 8}
    assert _without_temporaries(tmp_path) == ["config.json"]


@pytest.mark.slow
def test_configurable_save_killed_mid_write_keeps_the_previous_files(
    tmp_path: pathlib.Path,
) -> None:
    _run_until_hanging(
        tmp_path,
        """
        torch.manual_seed(0)
        MLP(in_dim=3).save(workdir / "model")
        hang_in_torch_save_after(0)
        MLP(in_dim=3, width=16).save(workdir / "model")
        """,
    )
    assert _without_temporaries(tmp_path) == ["model.json", "model.pt"]
    assert json.loads((tmp_path / "model.json").read_text()) == {"in_dim": 3, "width": 8}
    weights = torch.load(tmp_path / "model.pt", weights_only=True)
    torch.manual_seed(0)
    assert torch.equal(weights["fc.weight"], nn.Linear(3, 8).weight)


@pytest.mark.slow
def test_model_saver_killed_mid_write_leaves_no_truncated_file(tmp_path: pathlib.Path) -> None:
    _run_until_hanging(
        tmp_path,
        """
        torch.manual_seed(0)
        data = torch.utils.data.TensorDataset(torch.randn(20, 3), torch.randint(0, 8, (20,)))
        model = MLP(in_dim=3)
        hang_in_torch_save_after(1)  # the second epoch's weights
        model.fit(
            torch.utils.data.DataLoader(data, batch_size=10),
            epochs=3,
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            loss=nn.CrossEntropyLoss(),
            callbacks=[xnn.ModelSaverCallback(workdir / "models")],
            gpu=False,
        )
        """,
    )
    folder = tmp_path / "models"
    assert _without_temporaries(folder) == ["model_epoch-0.json", "model_epoch-0.pt"]
    torch.load(folder / "model_epoch-0.pt", weights_only=True)  # complete


class _scripted:  # noqa: N801 - used like a function
    """Returns the given values, one per epoch (fit's check before training calls a copy)."""

    def __init__(self, values: list[float]) -> None:
        self.iterator = iter(list(values))

    def __call__(self, y_pred: torch.Tensor, y_true: torch.Tensor) -> float:
        return next(self.iterator)


@pytest.mark.slow
@pytest.mark.parametrize(("mode", "kept"), [("max", [1, 3, 4]), ("min", [2, 3, 4])])
def test_model_saver_keeps_the_last_and_the_best(
    mode: str, kept: list[int], make_model, dataset, tmp_path: pathlib.Path
) -> None:
    model = make_model()
    saver = xnn.ModelSaverCallback(
        tmp_path, keep_last=2, keep_best=1, best_metric="val_score", best_mode=mode
    )
    model.fit(
        dataset.loader(batch_size=10),
        val_data=dataset.loader(batch_size=30),
        epochs=5,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        loss=nn.CrossEntropyLoss(),
        metrics={"score": _scripted([0.5, 0.9, 0.1, 0.3, 0.2])},
        callbacks=[saver],
        gpu=False,
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"model_epoch-{i}.pt" for i in kept]
    assert saver.best_path == tmp_path / f"model_epoch-{kept[0]}"


def test_model_saver_checks_its_retention_arguments(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="keep_best=2 needs best_metric"):
        xnn.ModelSaverCallback(tmp_path, keep_best=2)
    with pytest.raises(ValueError, match="best_mode must be 'max' or 'min', but received 'up'"):
        xnn.ModelSaverCallback(tmp_path, best_metric="val_loss", best_mode="up")


@pytest.mark.slow
def test_fit_trainer_options_reach_the_retention(make_model, dataset, tmp_path) -> None:
    model = make_model()
    model.fit(
        dataset.loader(batch_size=10),
        epochs=3,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        loss=nn.CrossEntropyLoss(),
        trainer_options={
            "chkpt_root": tmp_path,
            "chkpt_frequency": 1,
            "chkpt_keep_last": 1,
            "chkpt_async": True,
        },
        gpu=False,
    )
    files = sorted(p.name for p in tmp_path.rglob("*.pth"))
    assert len(files) == 1 and "epoch_3" in files[0], files
