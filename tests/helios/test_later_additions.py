"""The backward-compatible additions of Helios 1.3.0 and the exception types of 1.2.7.

``Trainer(capture_warnings=...)``, ``Model.types_for_safe_load()`` and
``distributed.get_world_size()/get_local_world_size()`` (tested with two gloo processes in
``core/test_core_distributed.py``); ``AdaptiveAvgPool2d`` raising RuntimeError.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch.utils.data import TensorDataset

import helios.data as hld
import helios.model as hlm
import helios.trainer as hlt
from helios.core import logging as hcl
from helios.nn import layers


@pytest.fixture(autouse=True)
def _keep_deterministic_mode() -> Iterator[None]:
    enabled = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(enabled)


class _Data(hld.DataModule):
    def setup(self) -> None:
        dataset = TensorDataset(torch.arange(4.0).unsqueeze(1))
        self._train_dataset = self._create_dataset(dataset, hld.DataLoaderParams(batch_size=2))


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
        assert trainer.fit(_WarningModel(), _Data())
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


@dataclasses.dataclass
class _RegisteredStats:
    best: float


@dataclasses.dataclass
class _UnregisteredStats:
    best: float


class _StatsModel(hlm.Model):
    stats_type: type = _RegisteredStats

    def __init__(self) -> None:
        super().__init__("stats")
        self.loaded: Any = None

    def setup(self, fast_init: bool = False) -> None:
        pass

    def types_for_safe_load(self) -> list[type]:
        return [_RegisteredStats]

    def state_dict(self) -> dict[str, Any]:
        return {"stats": self.stats_type(best=0.5)}

    def load_state_dict(self, state_dict: dict[str, Any], fast_init: bool = False) -> None:
        self.loaded = state_dict["stats"]


class _ForgetfulModel(_StatsModel):
    stats_type = _UnregisteredStats

    def types_for_safe_load(self) -> list[type]:
        return []


def _fit_twice(model_type: type[_StatsModel], root: pathlib.Path) -> tuple[bool, _StatsModel]:
    def trainer() -> hlt.Trainer:
        return hlt.Trainer(
            total_steps=1, chkpt_frequency=1, chkpt_root=root, use_cpu=True, print_banner=False
        )

    assert trainer().fit(model_type(), _Data())
    resumed = model_type()
    return trainer().fit(resumed, _Data()), resumed


def test_types_for_safe_load_are_registered_before_a_checkpoint_is_read(
    tmp_path: pathlib.Path,
) -> None:
    assert hlm.Model.types_for_safe_load(_WarningModel()) == []
    ok, forgetful = _fit_twice(_ForgetfulModel, tmp_path / "a")
    assert not ok and forgetful.loaded is None  # weights_only refused the unknown type

    ok, model = _fit_twice(_StatsModel, tmp_path / "b")
    assert ok and model.loaded == _RegisteredStats(best=0.5)

    # And for testing from a checkpoint.
    tested = _StatsModel()
    trainer = hlt.Trainer(chkpt_root=tmp_path / "b", use_cpu=True, print_banner=False)
    assert trainer.test(tested, _Data())
    assert tested.loaded == _RegisteredStats(best=0.5)


def test_types_for_safe_load_must_return_types(tmp_path: pathlib.Path) -> None:
    class Bad(_StatsModel):
        def types_for_safe_load(self) -> list[type]:
            return ["not a type"]  # type: ignore[list-item]

    from helios.model.model import register_model_types_for_safe_load

    with pytest.raises(TypeError, match=r"Bad.types_for_safe_load\(\) must return a list"):
        register_model_types_for_safe_load(Bad())


@pytest.mark.parametrize("output_size", [1.0, None, (1, 2, 3), (1,), (1, 1.0), (1.0, 1), 0])
def test_adaptive_avg_pool_raises_runtime_error_as_documented(output_size: Any) -> None:
    with pytest.raises(RuntimeError, match="output_size"):
        layers.AdaptiveAvgPool2d(output_size)
