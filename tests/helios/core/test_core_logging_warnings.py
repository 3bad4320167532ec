"""``Trainer(capture_warnings=...)``: Python warnings routed into the run's log while it runs."""

from __future__ import annotations

import logging
import pathlib
import warnings
from typing import Any

import pytest

import helios.model as hlm
import helios.trainer as hlt
import toys
from helios.core import logging as hcl

pytestmark = pytest.mark.usefixtures("keep_deterministic_mode")


def _data() -> toys.BlobsData:
    return toys.BlobsData(num_samples=4, batch_size=2, shuffle=False, eval_batch_size=None)


class _WarningModel(hlm.Model):
    def __init__(self) -> None:
        super().__init__("warns")

    def setup(self, fast_init: bool = False) -> None:
        pass

    def train_step(self, batch: Any, state: hlt.TrainingState) -> None:
        warnings.warn(f"surface warning at iteration {state.global_iteration}", stacklevel=1)


def _capturing() -> bool:
    return getattr(logging, "_warnings_showwarning", None) is not None


@pytest.mark.parametrize("capture", [True, False])
def test_capture_warnings_routes_warnings_into_the_run_log(
    tmp_path: pathlib.Path, capture: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    trainer = hlt.Trainer(
        train_unit="iteration",
        total_steps=2,
        use_cpu=True,
        enable_file_logging=True,
        log_path=tmp_path,
        print_banner=False,
        capture_warnings=capture,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert trainer.fit(_WarningModel(), _data())
    [log_file] = tmp_path.glob("*.log")
    text = log_file.read_text(encoding="utf-8")
    captured = capsys.readouterr()
    if capture:
        assert "[WARNING]: " in text
        assert "UserWarning: surface warning at iteration 1" in text
        assert "surface warning at iteration 2" in text
        assert "surface warning at iteration 1" in captured.out  # the console handler
    else:
        assert "surface warning" not in text
        assert "surface warning" not in captured.out
    # The capture ends with the run: later warnings are printed as usual again.
    assert not _capturing()
    assert not logging.getLogger("py.warnings").handlers


def test_capture_warnings_keeps_a_capture_the_user_started() -> None:
    logging.captureWarnings(True)
    try:
        hcl.create_default_loggers(enable_tensorboard=False, capture_warnings=True)
        assert hcl.get_root_logger().captures_warnings
        hcl.close_default_loggers()
        assert _capturing()
    finally:
        logging.captureWarnings(False)
