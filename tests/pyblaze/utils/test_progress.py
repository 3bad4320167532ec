import io
import pathlib
import re

import pytest
import torch
from torch import nn

import pyblaze.nn as xnn
import pyblaze.nn.functional as X  # noqa: N812 - the seed's name
from pyblaze.utils import ProgressBar, format_metrics


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_format_metrics_sorts_and_formats() -> None:
    text = format_metrics({"val_loss": 1.0, "acc__{:.1%}": 0.25, "train_loss": 2})
    assert text == "acc: 25.0%, train_loss: 2.00000, val_loss: 1.00000"


def test_bar_prints_only_summary_line_when_not_a_terminal() -> None:
    stream = io.StringIO()
    bar = ProgressBar(3, file=stream, indent=2)
    bar.start()
    for _ in range(3):
        bar.step()
    bar.finish({"loss": 0.5})
    assert stream.getvalue() == "  [Elapsed 0:00:00] loss: 0.50000\n"


def test_bar_draws_in_place_on_a_terminal() -> None:
    stream = FakeTerminal()
    for _ in ProgressBar(range(2), file=stream):
        pass
    output = stream.getvalue()
    assert "\r\x1b[2K[" + " " * 30 + "] (0.0%) ETA n/a [Elapsed 0:00:00]" in output
    assert "[" + "=" * 30 + "] (100.0%) ETA 0:00:00" in output
    assert output.endswith("\r\x1b[2K[Elapsed 0:00:00]\n")


def test_verbose_false_prints_nothing() -> None:
    stream = io.StringIO()
    with ProgressBar(2, file=stream, verbose=False) as bar:
        bar.step(2)
    assert stream.getvalue() == ""


def test_batch_logger_prints_the_tutorial_format_to_a_file(
    tmp_path: pathlib.Path, make_model, dataset
) -> None:
    model = make_model()
    log = tmp_path / "logs" / "train.log"
    model.fit(
        dataset.loader(batch_size=8),
        val_data=dataset.loader(batch_size=16),
        epochs=2,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        loss=nn.CrossEntropyLoss(),
        callbacks=[xnn.BatchProgressLogger(file=log), xnn.EpochProgressLogger(file=log)],
        metrics={"accuracy": X.accuracy},
        gpu=False,
    )
    number = r"\d+\.\d{5}"
    line = (
        rf"  \[Elapsed 0:00:0\d\] train_loss: {number}, val_accuracy: {number}, "
        rf"val_loss: {number}\n"
    )
    expected = rf"Epoch 1/2:\n{line}Epoch 2/2:\n{line}\[Elapsed 0:00:0\d\]\n"
    assert re.fullmatch(expected, log.read_text())


def test_prediction_logger_prints_elapsed_time(capsys, make_model, dataset) -> None:
    model = make_model()
    model.evaluate(
        dataset.loader(batch_size=8),
        metrics={"accuracy": X.accuracy},
        callbacks=[xnn.PredictionProgressLogger()],
        gpu=False,
    )
    assert re.fullmatch(r"\[Elapsed 0:00:0\d\]\n", capsys.readouterr().out)


def test_progress_bar_frac() -> None:
    from pyblaze.utils import ProgressBar

    assert ProgressBar.frac(10, 3, verbose=False).total == 4
    assert ProgressBar.frac(9, 3).total == 3
    with pytest.raises(ValueError, match="denom must be greater than 0, got 0"):
        ProgressBar.frac(9, 0)
