"""Checkpoints: names, contents, atomic writes, discovery, safe loading and recovery."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import pickle
import random
import re
import stat
from collections.abc import Iterator
from typing import Any

import pytest
import resume_job as job
import torch

import helios
import helios.plugins as hlp
import helios.trainer as hlt


@dataclasses.dataclass
class UnregisteredState:
    value: int = 0


class CountingPlugin(hlp.Plugin):
    """Counts the runs that started; the count lives in the checkpoints."""

    def __init__(self) -> None:
        super().__init__("counter")
        self.starts = 0

    def configure_trainer(self, trainer: hlt.Trainer) -> None:
        self._register_in_trainer(trainer)

    def setup(self) -> None:
        pass

    def on_training_start(self) -> None:
        self.starts += 1

    def state_dict(self) -> dict[str, Any]:
        return {"starts": self.starts}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.starts = state_dict["starts"]


class MetadataModel(job.ResumeModel):
    def append_metadata_to_chkpt_name(self, chkpt_name: str) -> str:
        return f"{chkpt_name}_meta"


def _fit(
    workdir: pathlib.Path,
    unit: str = "iteration",
    total_steps: int = 4,
    model: Any = None,
    plugins: tuple[hlp.Plugin, ...] = (),
    **trainer_args: Any,
) -> tuple[bool, Any]:
    model = model if model is not None else job.ResumeModel()
    trainer = job.make_trainer(workdir, unit, total_steps, 1, **trainer_args)
    for plugin in plugins:
        plugin.configure_trainer(trainer)
    return trainer.fit(model, job.ResumeDataModule()), model


def _load(path: pathlib.Path) -> Any:
    hlt.register_trainer_types_for_safe_load()
    return torch.load(path, weights_only=True)


def _weights(model: Any) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in model.net.state_dict().items()}


def _assert_same_weights(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> None:
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key


@pytest.fixture
def clean_safe_globals() -> Iterator[None]:
    """Start with no registered safe globals; restore the previous ones afterwards."""
    saved = torch.serialization.get_safe_globals()
    torch.serialization.clear_safe_globals()
    yield
    torch.serialization.clear_safe_globals()
    torch.serialization.add_safe_globals(saved)


# -- find_last_checkpoint -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (["test_epoch_1_iter_10.pth"], "test_epoch_1_iter_10.pth"),
        (["test.txt"], None),
        (["test.pth"], None),
        (["test_epoch_1.pth"], None),
        (["test_iter_1.pth"], None),
        (["m_epoch_0_iter_0.pth"], "m_epoch_0_iter_0.pth"),
        # Numbers compare as numbers, the epoch first.
        (
            ["m_epoch_9_iter_90.pth", "m_epoch_10_iter_91.pth", "m_epoch_2_iter_100.pth"],
            "m_epoch_10_iter_91.pth",
        ),
        (["m_epoch_3_iter_9.pth", "m_epoch_3_iter_10.pth"], "m_epoch_3_iter_10.pth"),
        # Metadata after the position is allowed.
        (
            ["m_epoch_1_iter_2_loss_0.25.pth", "m_epoch_1_iter_1_loss_0.5.pth"],
            "m_epoch_1_iter_2_loss_0.25.pth",
        ),
        # Temporary files of interrupted saves and other extensions are not checkpoints.
        (
            ["m_epoch_1_iter_1.pth", ".m_epoch_5_iter_5.pth.a1b2.tmp", "m_epoch_7_iter_7.txt"],
            "m_epoch_1_iter_1.pth",
        ),
    ],
)
def test_find_last_checkpoint(
    names: list[str], expected: str | None, tmp_path: pathlib.Path
) -> None:
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    found = hlt.find_last_checkpoint(tmp_path)
    assert found == (tmp_path / expected if expected is not None else None)


def test_find_last_checkpoint_without_a_folder(tmp_path: pathlib.Path) -> None:
    assert hlt.find_last_checkpoint(tmp_path / "missing") is None
    assert hlt.find_last_checkpoint(None) is None
    assert hlt.find_last_checkpoint(tmp_path) is None


# -- safe loading ---------------------------------------------------------------------------


def test_trainer_safe_types() -> None:
    types = hlt.get_trainer_safe_types_for_load()
    assert {hlt.TrainingState, pathlib.PosixPath, pathlib.WindowsPath} <= set(types)


def test_registering_the_trainer_types_makes_them_loadable(
    clean_safe_globals: None, tmp_path: pathlib.Path
) -> None:
    path = tmp_path / "state.pth"
    state = hlt.TrainingState(current_iteration=3, global_iteration=6, global_epoch=2)
    torch.save({"training_state": state, "log_path": pathlib.Path("/logs/run.log")}, path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)

    hlt.register_trainer_types_for_safe_load()
    loaded = torch.load(path, weights_only=True)
    assert loaded == {"training_state": state, "log_path": pathlib.Path("/logs/run.log")}


def test_an_unregistered_type_fails_fit_until_it_is_registered(
    clean_safe_globals: None,
    tmp_path: pathlib.Path,
    capsys: pytest.CaptureFixture[str],
    recwarn: pytest.WarningsRecorder,
) -> None:
    model = job.ResumeModel()
    model.extra_state = {"custom": UnregisteredState(7)}
    ok, _ = _fit(tmp_path, total_steps=2, model=model)
    assert ok
    capsys.readouterr()

    # Checkpoints load with weights_only=True: the unknown class is refused, the error
    # and its traceback are shown, and the checkpoint is not mistaken for a corrupt one.
    ok, _ = _fit(tmp_path, total_steps=3)
    assert ok is False
    err = capsys.readouterr().err
    assert "Traceback" in err and "UnpicklingError" in err and "UnregisteredState" in err
    newest = job.checkpoint_dir(tmp_path) / "resume_epoch_1_iter_2.pth"
    assert hlt.find_last_checkpoint(job.checkpoint_dir(tmp_path)) == newest
    assert not [w for w in recwarn if str(newest) in str(w.message)]

    torch.serialization.add_safe_globals([UnregisteredState])
    ok, resumed = _fit(tmp_path, total_steps=3)
    assert ok
    assert "Resuming training from checkpoint" in capsys.readouterr().out
    assert [r["gi"] for r in resumed.records] == [3]


# -- names and contents ---------------------------------------------------------------------


def test_checkpoint_names_and_contents_with_logging_and_plugins(tmp_path: pathlib.Path) -> None:
    logging_args: dict[str, Any] = {
        "enable_file_logging": True,
        "log_path": tmp_path / "logs",
        "enable_tensorboard": True,
        "run_path": tmp_path / "runs",
    }
    plugin = CountingPlugin()
    ok, model = _fit(
        tmp_path, total_steps=2, model=MetadataModel(), plugins=(plugin,), **logging_args
    )
    assert ok
    folder = job.checkpoint_dir(tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == [
        "resume_epoch_1_iter_1_meta.pth",
        "resume_epoch_1_iter_2_meta.pth",
    ]
    (log_file,) = (tmp_path / "logs").iterdir()
    (run_dir,) = (tmp_path / "runs").iterdir()

    contents = _load(folder / "resume_epoch_1_iter_2_meta.pth")
    assert set(contents) == {
        "version",
        "training_state",
        "model",
        "precision",
        "rng",
        "log_path",
        "run_path",
        "tensorboard_events",
        "counter",
        "ranks",
        "environment",
    }
    assert contents["precision"] == {"name": "32", "scaler": {}}
    assert contents["version"] == helios.__version__
    state = contents["training_state"]
    assert isinstance(state, hlt.TrainingState)
    assert dataclasses.replace(state, average_iter_time=0) == hlt.TrainingState(
        current_iteration=2,
        global_iteration=2,
        global_epoch=1,
        dataset_iter=2,
        validation_cycles=1,
        running_iter=0,
    )
    assert set(contents["model"]) == {"net", "optimizer"}
    _assert_same_weights(contents["model"]["net"], _weights(model))
    assert {"torch", "rand", "numpy"} <= set(contents["rng"])
    assert contents["log_path"] == log_file
    assert contents["run_path"] == run_dir
    (event_file,) = run_dir.iterdir()
    assert contents["tensorboard_events"] == {event_file.name: event_file.stat().st_size}
    assert contents["counter"] == {"starts": 1}
    (rank0,) = contents["ranks"]
    assert set(rank0) == {"rng", "sampler"}
    # The position: epoch and batch of this rank, and the global one (world size, samples).
    assert rank0["sampler"] == {"epoch": 0, "start_iter": 2, "world_size": 1, "consumed": 8}
    assert torch.equal(rank0["rng"]["torch"], contents["rng"]["torch"])
    assert rank0["rng"]["rand"] == contents["rng"]["rand"]

    # A resumed run continues the same log file and TensorBoard run, and restores plug-ins.
    plugin = CountingPlugin()
    ok, _ = _fit(tmp_path, total_steps=3, model=MetadataModel(), plugins=(plugin,), **logging_args)
    assert ok
    assert list((tmp_path / "logs").iterdir()) == [log_file]
    assert list((tmp_path / "runs").iterdir()) == [run_dir]
    contents = _load(folder / "resume_epoch_1_iter_3_meta.pth")
    assert contents["log_path"] == log_file
    assert contents["run_path"] == run_dir
    assert contents["counter"] == {"starts": 2}


@pytest.mark.parametrize(
    ("unit", "total_steps", "chkpt_frequency", "expected"),
    [
        ("epoch", 2, 1, {"resume_epoch_1_iter_3.pth": 0, "resume_epoch_2_iter_6.pth": 1}),
        ("iteration", 5, 2, {"resume_epoch_1_iter_2.pth": 0, "resume_epoch_2_iter_4.pth": 1}),
    ],
)
def test_checkpoint_names_and_contents_without_logging(
    unit: str,
    total_steps: int,
    chkpt_frequency: int,
    expected: dict[str, int],
    tmp_path: pathlib.Path,
) -> None:
    ok, _ = _fit(tmp_path, unit, total_steps, chkpt_frequency=chkpt_frequency)
    assert ok
    folder = job.checkpoint_dir(tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == sorted(expected)
    for name, epoch_index in expected.items():
        contents = _load(folder / name)
        # The running loss sums are saved when there are some (none right after a validation).
        expected_keys = {
            "version", "training_state", "model", "precision", "rng", "ranks", "environment"
        }  # fmt: skip
        assert set(contents) - {"running_losses"} == expected_keys
        assert set(contents.get("running_losses", {})) <= {"loss"}
        state = contents["training_state"]
        start_iter = 0 if unit == "epoch" else state.dataset_iter
        assert contents["ranks"][0]["sampler"] == {
            "epoch": epoch_index,
            "start_iter": start_iter,
            "world_size": 1,
            "consumed": start_iter * job.BATCH_SIZE,
        }


def test_checkpoint_files_get_the_usual_permissions(tmp_path: pathlib.Path) -> None:
    """Atomic writing must not leave checkpoints readable by their owner only."""
    umask = os.umask(0)
    os.umask(umask)
    ok, _ = _fit(tmp_path, total_steps=1)
    assert ok
    (checkpoint,) = job.checkpoint_dir(tmp_path).iterdir()
    plain = tmp_path / "plain.pth"
    torch.save({}, plain)
    assert stat.S_IMODE(checkpoint.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)
    assert stat.S_IMODE(plain.stat().st_mode) == 0o666 & ~umask


def test_resume_continues_the_same_log_file(tmp_path: pathlib.Path) -> None:
    logging_args: dict[str, Any] = {"enable_file_logging": True, "log_path": tmp_path / "logs"}
    ok, _ = _fit(tmp_path, total_steps=2, **logging_args)
    assert ok
    (log_file,) = (tmp_path / "logs").iterdir()
    first_text = log_file.read_text()

    ok, _ = _fit(tmp_path, total_steps=4, **logging_args)
    assert ok
    assert list((tmp_path / "logs").iterdir()) == [log_file]
    text = log_file.read_text()
    assert text.startswith(first_text)
    folder = job.checkpoint_dir(tmp_path)
    added = text[len(first_text) :]
    assert f"Resuming training from checkpoint {folder / 'resume_epoch_1_iter_2.pth'}" in added
    assert f"Saved checkpoint {folder / 'resume_epoch_2_iter_4.pth'}" in added
    assert _load(folder / "resume_epoch_2_iter_4.pth")["log_path"] == log_file


# -- atomic writes and recovery -------------------------------------------------------------


def test_a_failing_save_leaves_the_previous_checkpoints_intact(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real_save = torch.save
    saves = 0

    def save_that_fails_the_third_time(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        nonlocal saves
        saves += 1
        if saves == 3:
            f.write(b"the first bytes of a checkpoint")
            raise OSError(28, "No space left on device")
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_that_fails_the_third_time)
    ok, _ = _fit(tmp_path, total_steps=4)
    monkeypatch.undo()
    assert ok is False
    err = capsys.readouterr().err
    assert "Traceback" in err and "No space left on device" in err

    folder = job.checkpoint_dir(tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == [
        "resume_epoch_1_iter_1.pth",
        "resume_epoch_1_iter_2.pth",
    ]
    assert _load(folder / "resume_epoch_1_iter_2.pth")["training_state"].current_iteration == 2

    ok, resumed = _fit(tmp_path, total_steps=4)
    assert ok
    assert [r["gi"] for r in resumed.records] == [3, 4]
    ok, uninterrupted = _fit(tmp_path / "uninterrupted", total_steps=4)
    assert ok
    _assert_same_weights(_weights(resumed), _weights(uninterrupted))


def _truncate(path: pathlib.Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _rewrite(path: pathlib.Path, **changes: Any) -> None:
    contents = _load(path)
    contents.update(changes)
    for key in [key for key, value in changes.items() if value is None]:
        del contents[key]
    torch.save(contents, path)


CORRUPTIONS = {
    "truncated": _truncate,
    "empty": lambda path: path.write_bytes(b""),
    "zeros": lambda path: path.write_bytes(bytes(path.stat().st_size)),
    "text": lambda path: path.write_bytes(b"this is not a checkpoint\n" * 20),
    "random bytes": lambda path: path.write_bytes(random.Random(0).randbytes(2000)),
    "missing keys": lambda path: _rewrite(path, training_state=None, rng=None),
    "newer version": lambda path: _rewrite(path, version="999.0.0"),
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_an_unreadable_newest_checkpoint_is_skipped_with_a_warning(
    corruption: str, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ok, complete = _fit(tmp_path, total_steps=4)
    assert ok
    folder = job.checkpoint_dir(tmp_path)
    newest = folder / "resume_epoch_2_iter_4.pth"
    CORRUPTIONS[corruption](newest)
    capsys.readouterr()

    with pytest.warns(RuntimeWarning, match=re.escape(str(newest))):
        ok, resumed = _fit(tmp_path, total_steps=4)
    assert ok
    out = capsys.readouterr().out
    assert str(newest) in out
    assert f"Resuming training from checkpoint {folder / 'resume_epoch_1_iter_3.pth'}" in out
    assert [r["gi"] for r in resumed.records] == [4]
    _assert_same_weights(_weights(resumed), _weights(complete))
    assert _load(newest)["training_state"].current_iteration == 4


def test_without_a_readable_checkpoint_training_starts_over(tmp_path: pathlib.Path) -> None:
    ok, complete = _fit(tmp_path, total_steps=1)
    assert ok
    (only,) = job.checkpoint_dir(tmp_path).iterdir()
    _truncate(only)

    with pytest.warns(RuntimeWarning, match=re.escape(str(only))):
        ok, again = _fit(tmp_path, total_steps=1)
    assert ok
    assert [r["gi"] for r in again.records] == [1]
    _assert_same_weights(_weights(again), _weights(complete))
