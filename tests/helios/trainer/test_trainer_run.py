"""Behaviour of Trainer.fit / Trainer.test as a user sees it."""

from __future__ import annotations

import pathlib
import sys
from typing import Any

import pytest
import torch
from torch import nn

import helios.plugins as hlp
import helios.trainer as hlt
import toys
from helios.core import logging


class TinyModel(toys.LinearClassifier):
    """The shared linear classifier, with failures planted on request and logged losses."""

    def __init__(self, fail_in: str | None = None, error: type[Exception] = KeyError) -> None:
        super().__init__("tiny")
        self.fail_in, self.error = fail_in, error
        self.tested_weights: torch.Tensor | None = None

    def _maybe_fail(self, where: str) -> None:
        if self.fail_in == where:
            raise self.error(f"planted failure in {where}")

    def on_training_start(self) -> None:
        self._maybe_fail("on_training_start")

    def train_step(self, batch: Any, state: hlt.TrainingState) -> None:
        self._maybe_fail("train_step")
        super().train_step(batch, state)

    def on_training_batch_end(self, state: hlt.TrainingState, should_log: bool = False) -> None:
        super().on_training_batch_end(state, should_log)
        if should_log:
            logging.get_root_logger().info(
                f"iteration {state.global_iteration} loss {self._loss_items['loss']:.4f}"
            )
            writer = logging.get_tensorboard_writer()
            if writer is not None:
                writer.add_scalar("train/loss", self._loss_items["loss"], state.global_iteration)

    def on_testing_start(self) -> None:
        super().on_testing_start()
        self._maybe_fail("on_testing_start")
        self.tested_weights = self.net.weight.detach().clone()

    def test_step(self, batch: Any, step: int) -> None:
        self._maybe_fail("test_step")


def make_trainer(tmp_path: pathlib.Path, **kwargs: Any) -> hlt.Trainer:
    options: dict[str, Any] = {"total_steps": 2, "use_cpu": True, "print_banner": False}
    options.update(kwargs)
    return hlt.Trainer(**options)


@pytest.mark.parametrize("method", ["fit", "test"])
def test_wrong_types_raise_before_starting(tmp_path, method) -> None:
    trainer = make_trainer(tmp_path)
    data = toys.BlobsData()
    with pytest.raises(TypeError, match=r"expects a helios.model.Model as model.*Linear"):
        getattr(trainer, method)(nn.Linear(1, 1), data)
    with pytest.raises(TypeError, match=r"helios.data.DataModule as datamodule.*list"):
        getattr(trainer, method)(TinyModel(), [])
    assert not data.prepared


@pytest.mark.parametrize("where", ["on_training_start", "train_step"])
def test_unlisted_exception_is_logged_and_fit_returns_false(tmp_path, capsys, where) -> None:
    trainer = make_trainer(
        tmp_path, enable_file_logging=True, log_path=tmp_path / "logs"
    )  # fmt: skip
    assert trainer.fit(TinyModel(fail_in=where), toys.BlobsData()) is False
    captured = capsys.readouterr()
    err = captured.err
    assert "planted" not in captured.out
    assert err.startswith("Traceback (most recent call last)")
    assert err.count(f"KeyError: 'planted failure in {where}'") == 2  # traceback and summary
    assert err.endswith(
        f"\nfit failed in TinyModel.{where}: KeyError: 'planted failure in {where}'\n"
    )
    # The log file keeps the record.
    log = next((tmp_path / "logs").glob("*.log")).read_text()
    assert "[ERROR]: Traceback (most recent call last)" in log
    assert f"fit failed in TinyModel.{where}" in log


def test_listed_exception_is_reraised(tmp_path) -> None:
    trainer = make_trainer(tmp_path)
    trainer.train_exceptions.append(ValueError)
    with pytest.raises(ValueError, match="planted failure in train_step"):
        trainer.fit(TinyModel(fail_in="train_step", error=ValueError), toys.BlobsData())
    assert not logging.is_root_logger_active()


def test_test_exceptions(tmp_path, capsys) -> None:
    trainer = make_trainer(tmp_path)
    assert trainer.test(TinyModel(fail_in="test_step"), toys.BlobsData()) is False
    assert "test failed in TinyModel.test_step: KeyError" in capsys.readouterr().err
    trainer.test_exceptions.append(RuntimeError)
    with pytest.raises(RuntimeError, match="planted"):
        trainer.test(TinyModel(fail_in="on_testing_start", error=RuntimeError), toys.BlobsData())


def test_two_runs_in_one_process_keep_their_logs_apart(tmp_path, capsys) -> None:
    for name in ("first", "second"):
        trainer = make_trainer(
            tmp_path, run_name=name, enable_file_logging=True, log_path=tmp_path / name,
            print_frequency=1,
        )  # fmt: skip
        assert trainer.fit(TinyModel(), toys.BlobsData())
    first = next((tmp_path / "first").glob("*.log")).read_text()
    second = next((tmp_path / "second").glob("*.log")).read_text()
    assert first.count("iteration 1 loss") == 1 and second.count("iteration 1 loss") == 1
    assert first.count("Starting epoch 1") == 1 and second.count("Starting epoch 1") == 1
    assert make_trainer(tmp_path).fit(TinyModel(fail_in="train_step"), toys.BlobsData()) is False
    assert capsys.readouterr().err.count("KeyError: 'planted failure in train_step'") == 2
    assert "planted" not in first + second + next((tmp_path / "second").glob("*.log")).read_text()


def test_log_path_without_file_logging_writes_nothing(tmp_path) -> None:
    trainer = make_trainer(tmp_path, log_path=tmp_path / "logs", run_path=tmp_path / "runs")
    assert trainer.fit(TinyModel(), toys.BlobsData())
    assert not (tmp_path / "logs").exists() and not (tmp_path / "runs").exists()


def test_tensorboard_and_log_file_and_resume_message(tmp_path, capsys) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    options = {
        "run_name": "tb", "enable_tensorboard": True, "run_path": tmp_path / "runs",
        "enable_file_logging": True, "log_path": tmp_path / "logs", "print_frequency": 2,
        "chkpt_frequency": 1, "chkpt_root": tmp_path / "chkpt",
    }  # fmt: skip
    assert make_trainer(tmp_path, **options).fit(TinyModel(), toys.BlobsData())
    (run_dir,) = (tmp_path / "runs").iterdir()
    events = EventAccumulator(str(run_dir))
    events.Reload()
    steps = [event.step for event in events.Tensors("train/loss")]
    assert steps == [2, 4, 6, 8]
    capsys.readouterr()

    assert make_trainer(tmp_path, **{**options, "total_steps": 3}).fit(
        TinyModel(), toys.BlobsData()
    )
    out = capsys.readouterr().out
    assert "Resuming training from checkpoint" in out and "tiny_epoch_2_iter_8.pth" in out
    (log_file,) = (tmp_path / "logs").iterdir()
    text = log_file.read_text()
    assert "Resuming training from checkpoint" in text and "Starting epoch 3" in text
    assert len(list((tmp_path / "runs").iterdir())) == 1
    events = EventAccumulator(str(run_dir))
    events.Reload()
    assert sorted(event.step for event in events.Tensors("train/loss")) == [2, 4, 6, 8, 10, 12]
    assert sorted(p.name for p in (tmp_path / "chkpt" / "tiny").iterdir()) == [
        "tiny_epoch_1_iter_4.pth",
        "tiny_epoch_2_iter_8.pth",
        "tiny_epoch_3_iter_12.pth",
    ]


def test_test_loads_the_last_checkpoint(tmp_path, capsys) -> None:
    trainer = make_trainer(tmp_path, chkpt_frequency=1, chkpt_root=tmp_path)
    trained = TinyModel()
    assert trainer.fit(trained, toys.BlobsData())
    fresh = TinyModel()
    assert trainer.test(fresh, toys.BlobsData())
    assert fresh.tested_weights is not None
    assert torch.equal(fresh.tested_weights, trained.net.weight)
    assert "Testing using checkpoint" in capsys.readouterr().out
    assert not (tmp_path / "tiny" / "tiny").exists()


def test_no_host_device_sync_per_batch(tmp_path, monkeypatch) -> None:
    """Neither the trainer nor the default model hooks call .item()/.cpu() per batch.

    The one exception is the non-finite guard reading a loss that lives on the CPU, which is
    no host-device synchronisation (its device path is tested in test_nonfinite.py).
    """
    original_item, original_cpu = torch.Tensor.item, torch.Tensor.cpu

    def guard(original: Any) -> Any:
        def wrapper(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if caller == "helios.trainer.nonfinite" and self.device.type == "cpu":
                return original(self, *args, **kwargs)
            if caller.startswith("helios."):
                raise AssertionError(f"host-device sync from {caller}")
            return original(self, *args, **kwargs)

        return wrapper

    trainer = make_trainer(tmp_path, total_steps=3)
    trainer.train_exceptions.append(AssertionError)
    monkeypatch.setattr(torch.Tensor, "item", guard(original_item))
    monkeypatch.setattr(torch.Tensor, "cpu", guard(original_cpu))
    assert trainer.fit(TinyModel(), toys.BlobsData())


class CountingPlugin(hlp.Plugin):
    def __init__(self) -> None:
        super().__init__("counter")
        self.unique_overrides.training_batch = True
        self.batches = 0
        self.loaded: dict[str, Any] | None = None

    def configure_trainer(self, trainer: hlt.Trainer) -> None:
        self._register_in_trainer(trainer)

    def setup(self) -> None:
        pass

    def process_training_batch(self, batch: Any, state: hlt.TrainingState) -> Any:
        self.batches += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"batches": self.batches}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.loaded = state_dict
        self.batches = state_dict["batches"]


def test_plugin_state_is_checkpointed_and_restored(tmp_path) -> None:
    options = {"chkpt_frequency": 1, "chkpt_root": tmp_path}
    trainer = make_trainer(tmp_path, **options)
    plugin = CountingPlugin()
    plugin.configure_trainer(trainer)
    assert trainer.fit(TinyModel(), toys.BlobsData())
    saved = torch.load(tmp_path / "tiny" / "tiny_epoch_2_iter_8.pth", weights_only=True)
    assert saved["counter"] == {"batches": 8}

    trainer = make_trainer(tmp_path, total_steps=3, **options)
    resumed = CountingPlugin()
    resumed.configure_trainer(trainer)
    assert trainer.fit(TinyModel(), toys.BlobsData())
    assert resumed.loaded == {"batches": 8} and resumed.batches == 12


def test_second_plugin_with_same_unique_override_raises_on_registration(tmp_path) -> None:
    trainer = make_trainer(tmp_path)
    CountingPlugin().configure_trainer(trainer)

    class Other(CountingPlugin):
        def __init__(self) -> None:
            super().__init__()
            self._plug_id = "other"

    with pytest.raises(ValueError, match="training_batch"):
        Other().configure_trainer(trainer)


def test_model_and_plugin_see_the_run(tmp_path) -> None:
    trainer = make_trainer(tmp_path)
    plugin = CountingPlugin()
    plugin.configure_trainer(trainer)
    model = TinyModel()
    assert trainer.fit(model, toys.BlobsData())
    for obj in (model, plugin):
        assert obj.trainer is trainer
        assert obj.device == torch.device("cpu")
        assert obj.rank == 0 and obj.is_distributed is False
    assert trainer.model is model


def test_progress_bars_off_a_terminal_print_whole_lines(tmp_path, capsys) -> None:
    trainer = make_trainer(tmp_path, enable_progress_bar=True, total_steps=3)
    assert trainer.fit(TinyModel(), toys.BlobsData())
    err = capsys.readouterr().err
    assert "\r" not in err and "\x1b[" not in err
    lines = [line for line in err.splitlines() if line.startswith("Training epochs")]
    assert 1 <= len(lines) <= 3
    assert "3/3" in lines[-1]


class BannerModel(TinyModel):
    def append_to_banner(self, banner: str) -> str:
        return banner + "\nbanner addition from the model"


def test_banner_is_printed_with_the_model_addition(tmp_path, capsys) -> None:
    trainer = make_trainer(tmp_path, print_banner=True, enable_file_logging=True,
                           log_path=tmp_path)  # fmt: skip
    assert trainer.fit(BannerModel(), toys.BlobsData())
    out = capsys.readouterr().out
    assert "Environment info" in out and "banner addition from the model" in out
    assert "banner addition from the model" in next(tmp_path.glob("*.log")).read_text()
    assert make_trainer(tmp_path, print_banner=False).fit(BannerModel(), toys.BlobsData())
    assert "Environment info" not in capsys.readouterr().out


def test_plugin_table_filled_by_hand_is_checked_before_starting(tmp_path) -> None:
    trainer = make_trainer(tmp_path)
    first, second = CountingPlugin(), CountingPlugin()
    trainer.plugins = {"a": first, "b": second}
    data = toys.BlobsData()
    with pytest.raises(ValueError, match="training_batch"):
        trainer.fit(TinyModel(), data)
    assert not data.prepared


@pytest.mark.parametrize("unit", ["epoch", "iteration"])
def test_fit_with_zero_total_steps_is_rejected_before_starting(tmp_path, unit) -> None:
    trainer = make_trainer(tmp_path, total_steps=0, train_unit=unit)
    data = toys.BlobsData()
    with pytest.raises(ValueError, match=f"total_steps=0 has nothing to train.*{unit}s"):
        trainer.fit(TinyModel(), data)
    assert not data.prepared
