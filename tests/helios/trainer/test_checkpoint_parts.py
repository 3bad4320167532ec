"""The table of checkpoint parts: reserved names refused, extra parts saved and resumed."""

from __future__ import annotations

import inspect
import pathlib
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
from helios.trainer.checkpoint import RESERVED_NAMES, read_checkpoint

HELIOS_ROOT = pathlib.Path(helios.__file__).resolve().parent


class TinyData(hld.DataModule):
    def setup(self) -> None:
        generator = torch.Generator().manual_seed(0)
        data = TensorDataset(torch.randn(8, 2, generator=generator), torch.randn(8, 1))
        self._train_dataset = self._create_dataset(data, hld.DataLoaderParams(batch_size=4))


class TinyModel(hlm.Model):
    def __init__(self) -> None:
        super().__init__("tiny")
        self.set_up = False
        self.helios_frames: list[int] = []

    def setup(self, fast_init: bool = False) -> None:
        self.set_up = True
        self.net = nn.Linear(2, 1)
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=0.1)

    def train_step(self, batch: Any, state: hlt.TrainingState) -> None:
        self.helios_frames.append(_helios_calls_on_the_stack())
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self._loss_items["loss"] = loss.detach()


def _helios_calls_on_the_stack() -> int:
    """The frames of helios code between here and the outermost call into helios."""
    return sum(
        pathlib.Path(frame.filename).resolve().is_relative_to(HELIOS_ROOT)
        for frame in inspect.stack(context=0)
    )


class Recorder:
    """An extra part: a resolved configuration a front end wants back on resume."""

    def __init__(self, state: dict[str, Any] | None = None) -> None:
        self.state = state
        self.loaded: list[Any] = []

    def state_dict(self) -> dict[str, Any] | None:
        return self.state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.loaded.append(state_dict)


class NamedPlugin(hlp.Plugin):
    def setup(self) -> None:
        pass


def _trainer(tmp_path: pathlib.Path, total_steps: int = 2) -> hlt.Trainer:
    return hlt.Trainer(
        train_unit="iteration",
        total_steps=total_steps,
        chkpt_frequency=1,
        chkpt_root=tmp_path,
        use_cpu=True,
        print_banner=False,
        print_summaries=False,
    )


@pytest.mark.parametrize("name", ["model", "training_state", "log_path", "rng"])
def test_a_plugin_whose_id_is_reserved_is_refused_before_training(
    tmp_path: pathlib.Path, name: str
) -> None:
    trainer = _trainer(tmp_path)
    NamedPlugin(name)._register_in_trainer(trainer)
    model = TinyModel()
    reason = RESERVED_NAMES[name].replace("(", r"\(").replace(")", r"\)")
    with pytest.raises(ValueError, match=rf"plug-in '{name}' \(NamedPlugin\) .*'{name}'.*{reason}"):
        trainer.fit(model, TinyData())
    assert not model.set_up
    assert not (tmp_path / "tiny").exists()


def test_an_extra_part_with_a_reserved_or_taken_name_is_refused(tmp_path: pathlib.Path) -> None:
    trainer = _trainer(tmp_path)
    with pytest.raises(ValueError, match=r"extra checkpoint part 'run_end' \(Recorder\).*reason"):
        trainer.add_checkpoint_part("run_end", Recorder())
    with pytest.raises(ValueError, match=r"must not be empty"):
        trainer.add_checkpoint_part("", Recorder())
    with pytest.raises(TypeError, match=r"must have state_dict\(\) and load_state_dict"):
        trainer.add_checkpoint_part("config", object())  # type: ignore[arg-type]
    trainer.add_checkpoint_part("config", Recorder())
    with pytest.raises(ValueError, match=r"'config'.*another extra part \(Recorder\)"):
        trainer.add_checkpoint_part("config", Recorder())
    # A plug-in registered later under the same name is refused when fit starts.
    NamedPlugin("config")._register_in_trainer(trainer)
    with pytest.raises(ValueError, match=r"extra checkpoint part 'config'.*plug-in 'config'"):
        trainer.fit(TinyModel(), TinyData())


def test_an_extra_part_is_saved_read_back_without_a_model_and_resumed(
    tmp_path: pathlib.Path,
) -> None:
    trainer = _trainer(tmp_path)
    trainer.add_checkpoint_part("config", Recorder({"lr": 0.1, "layers": [2, 1]}))
    assert list(trainer.checkpoint_parts) == ["config"]
    assert trainer.fit(TinyModel(), TinyData())
    newest = hlt.find_last_checkpoint(tmp_path / "tiny")
    assert newest is not None
    saved = read_checkpoint(newest)
    assert saved["config"] == {"lr": 0.1, "layers": [2, 1]}

    resumed = _trainer(tmp_path, total_steps=3)
    recorder = Recorder({"lr": 0.1, "layers": [2, 1]})
    resumed.add_checkpoint_part("config", recorder)
    assert resumed.fit(TinyModel(), TinyData())
    assert recorder.loaded == [{"lr": 0.1, "layers": [2, 1]}]


def test_fit_reaches_train_step_in_five_calls_of_helios_code(tmp_path: pathlib.Path) -> None:
    """Trainer.fit -> launch -> FitRun.main -> TrainingLoop.run -> _train_epoch -> train_step."""
    model = TinyModel()
    assert _trainer(tmp_path).fit(model, TinyData())
    assert model.helios_frames and max(model.helios_frames) <= 5


class FramesToFile(TinyModel):
    """Appends, on every rank, the count of helios frames above each ``train_step``."""

    def __init__(self, path: pathlib.Path) -> None:
        super().__init__()
        self.path = path

    def train_step(self, batch: Any, state: hlt.TrainingState) -> None:
        super().train_step(batch, state)
        with self.path.open("a") as file:
            file.write(f"{self.helios_frames[-1]}\n")


@pytest.mark.slow
def test_a_spawned_rank_reaches_train_step_in_three_calls_of_helios_code(
    tmp_path: pathlib.Path,
) -> None:
    """In a spawned rank: FitRun.main -> TrainingLoop.run -> _train_epoch -> train_step (the
    calling process adds Trainer.fit and launch: five in all)."""
    import dataclasses

    trainer = _trainer(tmp_path)
    # What Trainer(gpus=[0, 1]) configures (two spawned ranks), on the CPU with gloo.
    trainer._config = dataclasses.replace(trainer._config, is_distributed=True, gpu_ids=(0, 1))
    frames = tmp_path / "frames.txt"
    assert trainer.fit(FramesToFile(frames), TinyData())
    counts = [int(line) for line in frames.read_text().split()]
    assert len(counts) == 4 and max(counts) <= 3
