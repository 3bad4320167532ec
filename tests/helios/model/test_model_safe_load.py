"""``Model.types_for_safe_load()``: the model's own types in checkpoints read with weights_only."""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import pytest

import helios.model as hlm
import helios.trainer as hlt
import toys

pytestmark = pytest.mark.usefixtures("keep_deterministic_mode")


def _data() -> toys.BlobsData:
    return toys.BlobsData(num_samples=4, batch_size=2, shuffle=False, eval_batch_size=None)


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

    assert trainer().fit(model_type(), _data())
    resumed = model_type()
    return trainer().fit(resumed, _data()), resumed


def test_types_for_safe_load_are_registered_before_a_checkpoint_is_read(
    tmp_path: pathlib.Path,
) -> None:
    assert hlm.Model.types_for_safe_load(toys.LinearClassifier()) == []
    ok, forgetful = _fit_twice(_ForgetfulModel, tmp_path / "a")
    assert not ok and forgetful.loaded is None  # weights_only refused the unknown type

    ok, model = _fit_twice(_StatsModel, tmp_path / "b")
    assert ok and model.loaded == _RegisteredStats(best=0.5)

    # And for testing from a checkpoint.
    tested = _StatsModel()
    trainer = hlt.Trainer(chkpt_root=tmp_path / "b", use_cpu=True, print_banner=False)
    assert trainer.test(tested, _data())
    assert tested.loaded == _RegisteredStats(best=0.5)


def test_types_for_safe_load_must_return_types(tmp_path: pathlib.Path) -> None:
    class Bad(_StatsModel):
        def types_for_safe_load(self) -> list[type]:
            return ["not a type"]  # type: ignore[list-item]

    from helios.model.model import register_model_types_for_safe_load

    with pytest.raises(TypeError, match=r"Bad.types_for_safe_load\(\) must return a list"):
        register_model_types_for_safe_load(Bad())
