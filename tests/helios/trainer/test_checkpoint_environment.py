"""Every checkpoint records the environment that wrote it (key ``environment``)."""

from __future__ import annotations

import pathlib
import platform
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import helios
import helios.data as hld
import helios.model as hlm
import helios.plugins as hlp
import helios.trainer as hlt
from helios.core import safe_torch_load
from helios.trainer.checkpoint import RESERVED_NAMES, list_checkpoints, read_checkpoint
from helios.trainer.checkpoint.environment import EnvironmentPart, describe_environment


class TinyData(hld.DataModule):
    def setup(self) -> None:
        generator = torch.Generator().manual_seed(0)
        data = TensorDataset(torch.randn(16, 2, generator=generator), torch.randn(16, 1))
        self._train_dataset = self._create_dataset(
            data, hld.DataLoaderParams(batch_size=4, shuffle=True)
        )


class TinyModel(hlm.Model):
    def __init__(self) -> None:
        super().__init__("tiny")

    def setup(self, fast_init: bool = False) -> None:
        self.net = nn.Linear(2, 1)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=0.1)

    def train_step(self, batch: Any, state: hlt.TrainingState) -> None:
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self._loss_items["loss"] = loss.detach()


def _fit(root: pathlib.Path, total_steps: int) -> None:
    trainer = hlt.Trainer(
        train_unit="iteration",
        total_steps=total_steps,
        chkpt_frequency=2,
        chkpt_root=root,
        use_cpu=True,
        random_seed=3,
        print_banner=False,
        print_summaries=False,
    )
    assert trainer.fit(TinyModel(), TinyData())


def _newest(root: pathlib.Path) -> tuple[pathlib.Path, dict[str, Any]]:
    path = hlt.find_last_checkpoint(root / "tiny")
    assert path is not None
    return path, read_checkpoint(path)


def _rewrite(path: pathlib.Path, change: Any) -> None:
    """Rewrite a checkpoint file with one change to its contents (as another helios would)."""
    contents = safe_torch_load(path)
    change(contents)
    torch.save(contents, path)


def test_every_checkpoint_of_a_python_run_records_its_environment(tmp_path: pathlib.Path) -> None:
    _fit(tmp_path, total_steps=4)
    paths = list_checkpoints(tmp_path / "tiny")
    assert len(paths) == 2
    for path in paths:
        environment = read_checkpoint(path)["environment"]
        assert environment == {
            "helios": helios.__version__,
            "torch": str(torch.__version__),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "device": "cpu",
            "earlier": [],
        }
        # plain strings: readable with weights_only=True and without helios's types
        assert all(type(value) is str for key, value in environment.items() if key != "earlier")


def test_a_resume_in_another_environment_keeps_the_earlier_one_and_trains_the_same(
    tmp_path: pathlib.Path,
) -> None:
    _fit(tmp_path / "straight", total_steps=6)
    _, straight = _newest(tmp_path / "straight")

    _fit(tmp_path / "resumed", total_steps=4)
    path, _ = _newest(tmp_path / "resumed")
    older = {**describe_environment(), "torch": "2.6.0", "device": "cuda: NVIDIA A100"}
    _rewrite(path, lambda contents: contents.update(environment={**older, "earlier": []}))
    _fit(tmp_path / "resumed", total_steps=6)
    _, resumed = _newest(tmp_path / "resumed")

    assert resumed["environment"] == {**describe_environment(), "earlier": [older]}
    for key, tensor in straight["model"]["net"].items():
        assert torch.equal(tensor, resumed["model"]["net"][key]), key
    # a third segment in the same environment as the second adds nothing
    _fit(tmp_path / "resumed", total_steps=8)
    assert _newest(tmp_path / "resumed")[1]["environment"]["earlier"] == [older]


def test_a_checkpoint_without_the_record_resumes_and_gets_one(tmp_path: pathlib.Path) -> None:
    """An older helios (or Helios 1.2.7) wrote no ``environment``: it resumes as before."""
    _fit(tmp_path / "straight", total_steps=6)
    _, straight = _newest(tmp_path / "straight")
    _fit(tmp_path / "old", total_steps=4)
    path, _ = _newest(tmp_path / "old")
    _rewrite(path, lambda contents: contents.pop("environment"))
    assert "environment" not in read_checkpoint(path)

    _fit(tmp_path / "old", total_steps=6)
    _, resumed = _newest(tmp_path / "old")
    assert resumed["environment"] == {**describe_environment(), "earlier": []}
    assert resumed["training_state"].global_iteration == 6
    for key, tensor in straight["model"]["net"].items():
        assert torch.equal(tensor, resumed["model"]["net"][key]), key


def test_a_damaged_record_is_ignored() -> None:
    part = EnvironmentPart()
    part.load_state_dict("not a mapping")  # type: ignore[arg-type]
    part.load_state_dict({"torch": "1.0", "earlier": "not a list"})
    assert part.earlier == [{"torch": "1.0"}]
    assert part.state_dict() == {**describe_environment(), "earlier": [{"torch": "1.0"}]}


def test_the_name_is_reserved(tmp_path: pathlib.Path) -> None:
    assert "environment" in RESERVED_NAMES
    trainer = hlt.Trainer(total_steps=1, chkpt_root=tmp_path, use_cpu=True, print_banner=False)

    class Recorder:
        def state_dict(self) -> dict[str, Any]:
            return {}

        def load_state_dict(self, state_dict: dict[str, Any]) -> None:
            pass

    with pytest.raises(ValueError, match=r"'environment'.*versions and the device"):
        trainer.add_checkpoint_part("environment", Recorder())

    class NamedPlugin(hlp.Plugin):
        def setup(self) -> None:
            pass

    NamedPlugin("environment")._register_in_trainer(trainer)
    with pytest.raises(ValueError, match=r"plug-in 'environment' \(NamedPlugin\)"):
        trainer.fit(TinyModel(), TinyData())
