"""NeptuneTracker with a legacy experiment and with an offline Neptune run."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import pytest
import torch
from torch import nn

import pyblaze.nn as xnn
from pyblaze_toys import LinearEstimator, row_sums


def _data() -> Any:
    return row_sums().loader(batch_size=4)


class _LegacyExperiment:
    def __init__(self) -> None:
        self.logged: list[tuple[str, float]] = []

    def log_metric(self, name: str, value: float) -> None:
        self.logged.append((name, value))


def _fit_tracked(tracker: xnn.NeptuneTracker) -> Any:
    torch.manual_seed(7)
    model = LinearEstimator(2, 1)
    return model.fit(
        _data(),
        val_data=_data(),
        epochs=2,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        loss=nn.MSELoss(),
        callbacks=[tracker],
    )


def test_neptune_tracker_with_a_legacy_experiment() -> None:
    experiment = _LegacyExperiment()
    history = _fit_tracked(xnn.NeptuneTracker(experiment))
    names = [name for name, _ in experiment.logged]
    assert names == ["batch_train_loss"] * 2 + ["train_loss", "val_loss"] + [
        "batch_train_loss"
    ] * 2 + ["train_loss", "val_loss"]
    epoch_losses = [v for n, v in experiment.logged if n == "train_loss"]
    assert epoch_losses == pytest.approx(history.train_loss)
    with pytest.raises(TypeError, match=r"neptune run .* or have a log_metric"):
        xnn.NeptuneTracker(3)


@pytest.mark.slow
def test_neptune_tracker_with_an_offline_neptune_run(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    neptune = pytest.importorskip("neptune")
    monkeypatch.chdir(tmp_path)  # offline runs are written to ./.neptune
    run = neptune.init_run(
        mode="offline",
        project="helios/pyblaze-test",
        capture_hardware_metrics=False,
        capture_stdout=False,
        capture_stderr=False,
        capture_traceback=False,
        git_ref=False,
    )
    history = _fit_tracked(xnn.NeptuneTracker(run))
    run.stop()
    # Read what the client wrote for upload, with Neptune's own offline format (JSON lines).
    logged: dict[str, list[float]] = {}
    for log_file in tmp_path.glob(".neptune/offline/*/data-*.log"):
        for line in log_file.read_text().splitlines():
            operation = json.loads(line)["obj"]
            if operation["type"] == "LogFloats":
                name = "/".join(operation["path"])
                logged.setdefault(name, []).extend(v["value"] for v in operation["values"])
    assert logged["train_loss"] == pytest.approx(history.train_loss)
    assert logged["val_loss"] == pytest.approx(history.val_loss)
    assert len(logged["batch_train_loss"]) == 4
