from __future__ import annotations

import json
import pathlib

import pytest
import torch
from torch import nn

import pyblaze.nn as xnn


class MLPConfig(xnn.Config):
    in_dim: int
    hidden: list[int] = [8]
    dropout: float = 0.0
    name: str | None = None

    def is_valid(self) -> bool:
        return 0 <= self.dropout < 1


class WideConfig(MLPConfig):
    width_factor: int = 2


class OtherConfig(xnn.Config):
    x: int = 1


class MLP(xnn.Configurable, nn.Module):
    __config__ = MLPConfig

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.fc = nn.Linear(self.in_dim, self.hidden[0])


def test_config_fields_defaults_and_checks() -> None:
    config = MLPConfig(in_dim=4, dropout=0)
    assert config.to_dict() == {"dropout": 0, "hidden": [8], "in_dim": 4, "name": None}
    assert MLPConfig(in_dim=4).hidden is not MLPConfig(in_dim=5).hidden
    with pytest.raises(ValueError, match=r"Missing required configuration parameter 'in_dim'"):
        MLPConfig()
    with pytest.raises(ValueError, match=r"Unknown configuration parameter\(s\) \['depth'\]"):
        MLPConfig(in_dim=4, depth=3)
    with pytest.raises(ValueError, match="Parameter 'in_dim' of MLPConfig should have type"):
        MLPConfig(in_dim="4")
    with pytest.raises(ValueError, match="Invalid configuration parameters"):
        MLPConfig(in_dim=4, dropout=1.5)


def test_config_fields_are_inherited() -> None:
    config = WideConfig(in_dim=3, width_factor=4)
    assert config.in_dim == 3
    assert config.width_factor == 4


def test_config_save_and_load(tmp_path: pathlib.Path) -> None:
    config = MLPConfig(in_dim=4, hidden=[3, 2], name="m")
    config.save(tmp_path / "nested" / "cfg")
    stored = json.loads((tmp_path / "nested" / "cfg.json").read_text())
    assert stored["hidden"] == [3, 2]
    assert MLPConfig.load(tmp_path / "nested" / "cfg") == config


def test_configurable_builds_from_kwargs_or_config() -> None:
    model = MLP(in_dim=5, hidden=[2])
    assert model.fc.in_features == 5
    assert model.in_dim == 5
    assert model.config == MLPConfig(in_dim=5, hidden=[2])
    assert model.num_parameters == 5 * 2 + 2
    model.fc.bias.requires_grad_(False)
    assert model.num_trainable_parameters == 10
    assert MLP(MLPConfig(in_dim=3)).fc.in_features == 3
    with pytest.raises(TypeError, match="either a config object or keyword arguments"):
        MLP(MLPConfig(in_dim=3), in_dim=3)
    with pytest.raises(TypeError, match="expects a config of type MLPConfig"):
        MLP(OtherConfig())
    with pytest.raises(AttributeError):
        _ = model.not_a_field


def test_configurable_save_and_load_round_trip(tmp_path: pathlib.Path) -> None:
    torch.manual_seed(0)
    model = MLP(in_dim=4, hidden=[3])
    model.save(tmp_path / "out" / "mlp")
    assert (tmp_path / "out" / "mlp.json").exists()
    assert (tmp_path / "out" / "mlp.pt").exists()
    loaded = MLP.load(tmp_path / "out" / "mlp")
    assert loaded.config == model.config
    assert torch.equal(loaded.fc.weight, model.fc.weight)
