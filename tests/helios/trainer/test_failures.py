"""A failed fit: traceback and a summary naming the hook on stderr, and a non-zero exit."""

from __future__ import annotations

import io
import os
import pathlib
import subprocess
import sys
from typing import Any

import pytest

import helios.data as hld
import helios.model as hlm
import helios.plugins as hlp
from helios.trainer import failures

JOB = pathlib.Path(__file__).with_name("failing_job.py")
SRC = pathlib.Path(__file__).resolve().parents[3] / "src"


class Net(hlm.Model):
    def __init__(self) -> None:
        super().__init__("net")

    def setup(self, fast_init: bool = False) -> None:
        pass

    def train_step(self, batch: Any, state: Any) -> None:
        self._helper()

    def _helper(self) -> None:
        raise ValueError("bad batch\nmore detail")


class Data(hld.DataModule):
    def setup(self) -> None:
        raise FileNotFoundError("no data here")


class Plug(hlp.Plugin):
    def __init__(self) -> None:
        super().__init__("plug")

    def setup(self) -> None:
        pass

    def process_training_batch(self, batch: Any, state: Any) -> Any:
        raise KeyError("missing")


def _driver(call: Any) -> BaseException:
    """Call ``call`` from a function that is not a hook, like the loop does."""
    try:
        call()
    except Exception as error:
        return error
    raise AssertionError("no exception")


@pytest.mark.parametrize(
    ("call", "summary"),
    [
        (
            lambda: Net().train_step(None, None),
            "fit failed in Net.train_step: ValueError: bad batch",
        ),
        (
            lambda: Data().setup(),
            "fit failed in Data.setup: FileNotFoundError: no data here",
        ),
        (
            lambda: Plug().process_training_batch(None, None),
            "fit failed in Plug.process_training_batch: KeyError: 'missing'",
        ),
        (lambda: int("x"), "fit failed: ValueError: invalid literal for int()"),
    ],
)
def test_summary_names_the_outermost_hook(call: Any, summary: str) -> None:
    error = _driver(call)
    assert failures.failure_summary(error).startswith(summary)
    assert "\n" not in failures.failure_summary(error)


def test_summary_with_rank_action_and_empty_message() -> None:
    error = _driver(lambda: Net().train_step(None, None))
    assert failures.failure_summary(error, "test", global_rank=1).startswith(
        "test failed on rank 1 in Net.train_step: ValueError"
    )
    assert failures.failure_summary(RuntimeError()) == "fit failed: RuntimeError"


def test_report_writes_traceback_then_summary() -> None:
    error = _driver(lambda: Net().train_step(None, None))
    stream = io.StringIO()
    text = failures.report_failure(error, file=stream)
    assert stream.getvalue() == text
    lines = text.splitlines()
    assert lines[0] == "Traceback (most recent call last):"
    assert "in _helper" in text and "ValueError: bad batch" in text
    assert lines[-1] == "fit failed in Net.train_step: ValueError: bad batch"


def test_report_to_a_closed_stream_does_not_raise() -> None:
    stream = io.StringIO()
    stream.close()
    failures.report_failure(ValueError("x"), file=stream)


def _run_job(tmp_path: pathlib.Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(JOB), str(tmp_path), *args],
        capture_output=True,
        text=True,
        timeout=240,
        env=dict(os.environ, PYTHONPATH=str(SRC)),
    )


@pytest.mark.slow
def test_failing_program_exits_non_zero_with_the_traceback_on_stderr(
    tmp_path: pathlib.Path,
) -> None:
    result = _run_job(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    err = result.stderr
    assert err.startswith("Traceback (most recent call last):"), err
    assert 'failing_job.py", line' in err and "in _check" in err
    assert err.rstrip("\n").splitlines()[-1] == (
        "fit failed in MyModel.train_step: ValueError: the targets do not match the predictions"
    )
    assert "Traceback" not in result.stdout
    (log,) = (tmp_path / "logs").iterdir()
    assert "fit failed in MyModel.train_step" in log.read_text()


@pytest.mark.slow
def test_listed_exception_is_reraised_by_fit(tmp_path: pathlib.Path) -> None:
    result = _run_job(tmp_path, "reraise")
    assert result.returncode == 1, result.stdout + result.stderr
    *_, error, second, batch_note = result.stderr.rstrip("\n").splitlines()
    assert [error, second] == [
        "ValueError: the targets do not match the predictions",
        "second line",
    ]
    assert batch_note.startswith("train_step failed on a batch that is ")
    assert "fit failed" not in result.stderr
