"""Pins the hook call order written in the docstring of helios.trainer.loops."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch.utils.data import TensorDataset

import helios.data as hld
import helios.model as hlm
import helios.plugins as hlp
import helios.trainer as hlt


class RecordingDataModule(hld.DataModule):
    def __init__(self, trace: list[str], n_train: int, train_bs: int, n_valid: int = 0) -> None:
        super().__init__()
        self.trace, self.n_train, self.train_bs, self.n_valid = trace, n_train, train_bs, n_valid

    def prepare_data(self) -> None:
        self.trace.append("D.prepare_data")

    def setup(self) -> None:
        self.trace.append("D.setup")
        train = TensorDataset(torch.arange(self.n_train).float())
        self._train_dataset = self._create_dataset(
            train, hld.DataLoaderParams(batch_size=self.train_bs)
        )
        if self.n_valid:
            valid = TensorDataset(torch.arange(self.n_valid).float())
            self._valid_dataset = self._create_dataset(valid, hld.DataLoaderParams(batch_size=2))
            self._test_dataset = self._create_dataset(valid, hld.DataLoaderParams(batch_size=2))


class RecordingModel(hlm.Model):
    def __init__(
        self, trace: list[str], improves: bool = True, stop_at_iteration: int | None = None
    ) -> None:
        super().__init__("rec")
        self.trace, self.improves, self.stop_at_iteration = trace, improves, stop_at_iteration
        self.global_iteration = 0

    def _rec(self, entry: str) -> None:
        self.trace.append(f"M.{entry}")

    def setup(self, fast_init: bool = False) -> None:
        self._rec(f"setup({fast_init})")

    def load_for_testing(self) -> None:
        self._rec("load_for_testing")

    def state_dict(self) -> dict[str, Any]:
        self._rec("state_dict")
        return {}

    def append_metadata_to_chkpt_name(self, chkpt_name: str) -> str:
        self._rec(f"append_metadata({chkpt_name})")
        return chkpt_name

    def train(self) -> None:
        self._rec("train")

    def eval(self) -> None:
        self._rec("eval")

    def on_training_start(self) -> None:
        self._rec("on_training_start")

    def on_training_epoch_start(self, current_epoch: int) -> None:
        self._rec(f"on_training_epoch_start({current_epoch})")

    def on_training_batch_start(self, state: hlt.TrainingState) -> None:
        super().on_training_batch_start(state)
        self.global_iteration = state.global_iteration
        self._rec(
            f"on_training_batch_start(gi={state.global_iteration},ci={state.current_iteration})"
        )

    def train_step(self, batch: Any, state: hlt.TrainingState) -> None:
        self._rec("train_step")

    def on_training_batch_end(self, state: hlt.TrainingState, should_log: bool = False) -> None:
        super().on_training_batch_end(state, should_log)
        self._rec(f"on_training_batch_end(log={should_log})")

    def on_training_epoch_end(self, current_epoch: int) -> None:
        self._rec(f"on_training_epoch_end({current_epoch})")

    def on_training_end(self) -> None:
        self._rec("on_training_end")

    def on_validation_start(self, validation_cycle: int) -> None:
        super().on_validation_start(validation_cycle)
        self._rec(f"on_validation_start({validation_cycle})")

    def valid_step(self, batch: Any, step: int) -> None:
        self._rec(f"valid_step({step})")

    def on_validation_end(self, validation_cycle: int) -> None:
        super().on_validation_end(validation_cycle)
        self._rec(f"on_validation_end({validation_cycle})")

    def have_metrics_improved(self) -> bool:
        self._rec("have_metrics_improved")
        return self.improves

    def should_training_stop(self) -> bool:
        self._rec("sts")
        return self.stop_at_iteration == self.global_iteration

    def on_testing_start(self) -> None:
        super().on_testing_start()
        self._rec("on_testing_start")

    def test_step(self, batch: Any, step: int) -> None:
        self._rec(f"test_step({step})")

    def on_testing_end(self) -> None:
        self._rec("on_testing_end")


class RecordingPlugin(hlp.Plugin):
    def __init__(self, trace: list[str]) -> None:
        super().__init__("recorder")
        self.trace = trace
        self.unique_overrides.training_batch = True
        self.unique_overrides.validation_batch = True
        self.unique_overrides.testing_batch = True
        self.unique_overrides.should_training_stop = True

    def _rec(self, entry: str) -> None:
        self.trace.append(f"P.{entry}")

    def configure_trainer(self, trainer: hlt.Trainer) -> None:
        self._register_in_trainer(trainer)

    def setup(self) -> None:
        self._rec("setup")

    def on_training_start(self) -> None:
        self._rec("on_training_start")

    def process_training_batch(self, batch: Any, state: hlt.TrainingState) -> Any:
        self._rec("process_training_batch")
        return batch

    def on_training_end(self) -> None:
        self._rec("on_training_end")

    def on_validation_start(self, validation_cycle: int) -> None:
        self._rec(f"on_validation_start({validation_cycle})")

    def process_validation_batch(self, batch: Any, step: int) -> Any:
        self._rec("process_validation_batch")
        return batch

    def on_validation_end(self, validation_cycle: int) -> None:
        self._rec(f"on_validation_end({validation_cycle})")

    def should_training_stop(self) -> bool:
        self._rec("sts")
        return False

    def state_dict(self) -> dict[str, Any]:
        self._rec("state_dict")
        return {}

    def on_testing_start(self) -> None:
        self._rec("on_testing_start")

    def process_testing_batch(self, batch: Any, step: int) -> Any:
        self._rec("process_testing_batch")
        return batch

    def on_testing_end(self) -> None:
        self._rec("on_testing_end")


def train_batch(gi: int, ci: int, log: bool) -> list[str]:
    return [
        "P.process_training_batch",
        f"M.on_training_batch_start(gi={gi},ci={ci})",
        "M.train_step",
        f"M.on_training_batch_end(log={log})",
        "P.sts",
        "M.sts",
    ]


def validation(cycle: int, batches: int = 1) -> list[str]:
    steps: list[str] = []
    for step in range(batches):
        steps += ["P.process_validation_batch", f"M.valid_step({step})"]
    return [
        "M.eval",
        f"P.on_validation_start({cycle})",
        f"M.on_validation_start({cycle})",
        *steps,
        "M.train",
        f"P.on_validation_end({cycle})",
        f"M.on_validation_end({cycle})",
        "M.have_metrics_improved",
    ]


def save(name: str) -> list[str]:
    return ["M.state_dict", "P.state_dict", f"M.append_metadata({name})"]


START = ["D.prepare_data", "P.setup", "D.setup", "M.setup(False)"]
TRAINING_START = ["P.on_training_start", "M.on_training_start", "M.train"]
TRAINING_END = ["P.on_training_end", "M.on_training_end"]
STS = ["P.sts", "M.sts"]


@pytest.fixture
def no_default_hooks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the base-class no-op hooks: they must never be called when not overridden."""
    calls: list[str] = []
    for name in (
        "on_validation_batch_start",
        "on_validation_batch_end",
        "on_testing_batch_start",
        "on_testing_batch_end",
    ):
        monkeypatch.setattr(
            hlm.Model, name, lambda self, *a, _n=name, **k: calls.append(_n), raising=True
        )
    return calls


def run(trainer: hlt.Trainer, model: RecordingModel, dm: RecordingDataModule) -> list[str]:
    plugin = RecordingPlugin(model.trace)
    plugin.configure_trainer(trainer)
    assert trainer.fit(model, dm)
    return model.trace


def test_epoch_unit_with_validation_and_checkpoints(tmp_path, no_default_hooks) -> None:
    trace: list[str] = []
    trainer = hlt.Trainer(
        train_unit="epoch",
        total_steps=2,
        valid_frequency=1,
        chkpt_frequency=2,
        print_frequency=1,
        chkpt_root=tmp_path,
        use_cpu=True,
        print_banner=False,
    )
    got = run(trainer, RecordingModel(trace), RecordingDataModule(trace, 4, 2, n_valid=2))
    expected = [
        *START,
        *TRAINING_START,
        "M.on_training_epoch_start(1)",
        *train_batch(1, 1, True),
        *train_batch(2, 2, True),
        *validation(0),
        *STS,
        "M.on_training_epoch_end(1)",
        *STS,
        "M.on_training_epoch_start(2)",
        *train_batch(3, 3, True),
        *train_batch(4, 4, True),
        *validation(1),
        *STS,
        "M.on_training_epoch_end(2)",
        *save("rec_epoch_2_iter_4"),
        *STS,
        *TRAINING_END,
    ]
    assert got == expected
    assert no_default_hooks == []
    assert [p.name for p in (tmp_path / "rec").iterdir()] == ["rec_epoch_2_iter_4.pth"]


def test_iteration_unit_with_accumulation(tmp_path, no_default_hooks) -> None:
    trace: list[str] = []
    trainer = hlt.Trainer(
        train_unit="iteration",
        total_steps=3,
        valid_frequency=2,
        chkpt_frequency=2,
        print_frequency=1,
        accumulation_steps=2,
        chkpt_root=tmp_path,
        use_cpu=True,
        print_banner=False,
    )
    got = run(trainer, RecordingModel(trace), RecordingDataModule(trace, 4, 1, n_valid=2))
    expected = [
        *START,
        *TRAINING_START,
        "M.on_training_epoch_start(1)",
        *train_batch(1, 0, False),
        *train_batch(2, 1, True),
        *train_batch(3, 1, False),
        *train_batch(4, 2, True),
        *validation(0),
        *STS,
        *save("rec_epoch_1_iter_2"),
        "M.on_training_epoch_end(1)",
        "M.on_training_epoch_start(2)",
        *train_batch(5, 2, False),
        *train_batch(6, 3, True),
        "M.on_training_epoch_end(2)",
        *TRAINING_END,
    ]
    assert got == expected
    assert no_default_hooks == []


def test_iteration_unit_without_validation_or_plugins(no_default_hooks) -> None:
    trace: list[str] = []
    trainer = hlt.Trainer(
        train_unit=hlt.TrainingUnit.ITERATION, total_steps=3, use_cpu=True, print_banner=False
    )
    model = RecordingModel(trace)
    assert trainer.fit(model, RecordingDataModule(trace, 2, 1, n_valid=2))
    batch = ["M.on_training_batch_start", "M.train_step", "M.on_training_batch_end", "M.sts"]
    assert [t.split("(")[0] for t in trace] == [
        "D.prepare_data",
        "D.setup",
        "M.setup",
        "M.on_training_start",
        "M.train",
        "M.on_training_epoch_start",
        *batch,
        *batch,
        "M.on_training_epoch_end",
        "M.on_training_epoch_start",
        *batch,
        "M.on_training_epoch_end",
        "M.on_training_end",
    ]


def test_early_stopping_stops_after_cycles_without_improvement(no_default_hooks) -> None:
    trace: list[str] = []
    trainer = hlt.Trainer(
        total_steps=10, valid_frequency=1, early_stop_cycles=2, use_cpu=True, print_banner=False
    )
    run(trainer, RecordingModel(trace, improves=False), RecordingDataModule(trace, 4, 2, 2))
    assert [t for t in trace if t.startswith("M.on_training_epoch_end")] == [
        "M.on_training_epoch_end(1)",
        "M.on_training_epoch_end(2)",
    ]
    assert trace[-2:] == TRAINING_END


def test_early_stopping_in_iteration_unit(no_default_hooks) -> None:
    trace: list[str] = []
    trainer = hlt.Trainer(
        train_unit="iteration",
        total_steps=math.inf,
        valid_frequency=3,
        early_stop_cycles=1,
        use_cpu=True,
        print_banner=False,
    )
    run(trainer, RecordingModel(trace, improves=False), RecordingDataModule(trace, 4, 1, 2))
    assert trace.count("M.train_step") == 3
    assert trace.count("M.have_metrics_improved") == 1


def test_stop_requested_mid_epoch_still_validates_and_ends_epoch(no_default_hooks) -> None:
    trace: list[str] = []
    trainer = hlt.Trainer(total_steps=5, valid_frequency=1, use_cpu=True, print_banner=False)
    model = RecordingModel(trace, stop_at_iteration=3)
    run(trainer, model, RecordingDataModule(trace, 4, 2, n_valid=2))
    tail = trace[trace.index("M.on_training_epoch_start(2)") :]
    assert tail == [
        "M.on_training_epoch_start(2)",
        *train_batch(3, 3, False),
        *validation(1),
        "M.on_training_epoch_end(2)",
        *TRAINING_END,
    ]


def test_test_order_without_checkpoint(no_default_hooks) -> None:
    trace: list[str] = []
    trainer = hlt.Trainer(use_cpu=True, print_banner=False)
    plugin = RecordingPlugin(trace)
    plugin.configure_trainer(trainer)
    assert trainer.test(RecordingModel(trace), RecordingDataModule(trace, 2, 1, n_valid=4))
    assert trace == [
        "D.prepare_data",
        "P.setup",
        "D.setup",
        "M.setup(True)",
        "M.load_for_testing",
        "P.on_testing_start",
        "M.on_testing_start",
        "M.eval",
        "P.process_testing_batch",
        "M.test_step(0)",
        "P.process_testing_batch",
        "M.test_step(1)",
        "P.on_testing_end",
        "M.on_testing_end",
    ]
    assert no_default_hooks == []
