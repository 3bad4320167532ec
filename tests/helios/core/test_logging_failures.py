"""A log that cannot be written never fails training: one warning, and the run goes on."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from helios.core import logging

JOB = pathlib.Path(__file__).with_name("disk_full_job.py")
SRC = pathlib.Path(__file__).resolve().parents[3] / "src"
WARNING = "helios warning: cannot write the log to"


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_root_logger_on_a_full_device_warns_once_and_never_raises(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logging.close_default_loggers()
    logging.create_default_loggers(enable_tensorboard=False)
    try:
        root = logging.get_root_logger()
        root.setup(pathlib.Path("/dev/full"))
        for index in range(50):
            root.info(f"line {index}")
        root.log_to_file(40, "error: only in the file")
        logging.flush_default_loggers()
        root.warning("a warning still reaches stdout")
    finally:
        logging.close_default_loggers()
    captured = capsys.readouterr()
    assert captured.err.count(WARNING) == 1, captured.err
    assert "/dev/full (OSError: [Errno 28] No space left on device)" in captured.err
    assert "Logging error" not in captured.err
    assert "a warning still reaches stdout" in captured.out


def test_log_to_file_writes_only_to_the_file(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    logging.close_default_loggers()
    logging.create_default_loggers(enable_tensorboard=False)
    try:
        root = logging.get_root_logger()
        root.log_to_file(40, "not written: no file yet")
        root.setup(tmp_path / "run.log")
        root.log_to_file(40, "error: in the file only")
    finally:
        logging.close_default_loggers()
    assert capsys.readouterr().out == ""
    text = (tmp_path / "run.log").read_text()
    assert "[ERROR]: error: in the file only" in text and "no file yet" not in text


@pytest.mark.slow
def test_fit_with_a_full_disk_for_the_log_completes_and_checkpoints(
    tmp_path: pathlib.Path,
) -> None:
    limit = 32 * 1024  # the log file reaches it early; each checkpoint stays below it
    result = subprocess.run(
        [sys.executable, str(JOB), str(tmp_path), str(limit)],
        capture_output=True,
        text=True,
        timeout=240,
        env=dict(os.environ, PYTHONPATH=str(SRC)),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    assert "FIT True" in result.stdout
    assert result.stderr.count(WARNING) == 1, result.stderr
    assert result.stderr.count("helios warning: cannot write the TensorBoard run to") == 1
    assert "File too large" in result.stderr
    assert "Logging error" not in result.stderr + result.stdout
    (log_file,) = (tmp_path / "logs").iterdir()
    assert log_file.stat().st_size == limit  # the log did fill up
    (events,) = (tmp_path / "runs").glob("*/events.out.tfevents.*")
    assert events.stat().st_size == limit
    checkpoints = sorted(p.name for p in (tmp_path / "chkpt" / "tiny").iterdir())
    assert checkpoints == [f"tiny_epoch_{e}_iter_{64 * e}.pth" for e in range(1, 5)]
