"""helios.chkpt_migrator: Helios 1.2.7 (and older) checkpoints resume here after migration.

The fixture writes checkpoints in the Helios 1.2.7 layout (spec §1.12.9 and §1.21): keys
``version`` (``"1.2.7"``), ``training_state`` (a ``TrainingState`` pickled under 1.2.7's
module name ``helios.trainer.TrainingState``), ``model``, ``rng`` (``torch``/``rand``/
``numpy`` only), optional ``log_path``/``run_path`` and one key per plug-in; no ``ranks``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import pickle
import random
import subprocess
import sys
import types
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import helios
import helios.data as hld
import helios.model as hlm
import helios.trainer as hlt
import toys
from helios import chkpt_migrator
from helios.core import rng
from helios.trainer.checkpoint import io as checkpoints
from helios.trainer.state import TrainingState

SRC = pathlib.Path(__file__).resolve().parents[2] / "src"


@pytest.fixture(autouse=True)
def _keep_deterministic_mode() -> Iterator[None]:
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


# -- a Helios 1.2.7 checkpoint writer ------------------------------------------------------


class _WindowsPathPickler(pickle.Pickler):
    """Pickle every path as ``pathlib.WindowsPath``, as a 1.2.7 run on Windows did."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, pathlib.PurePath):
            return (pathlib.WindowsPath, tuple(pathlib.PureWindowsPath(obj).parts))
        return NotImplemented


@contextlib.contextmanager
def _pickled_as_helios_127() -> Iterator[None]:
    """Pickle ``TrainingState`` under its 1.2.7 name ``helios.trainer.TrainingState``."""
    original = TrainingState.__module__
    TrainingState.__module__ = "helios.trainer"  # helios.trainer re-exports the class
    try:
        yield
    finally:
        TrainingState.__module__ = original


def write_helios_127_checkpoint(
    path: pathlib.Path, contents: dict[str, Any], windows_paths: bool = False
) -> None:
    """Write ``contents`` the way Helios 1.2.7's ``_save_checkpoint`` wrote a file."""
    assert "ranks" not in contents
    pickle_module: Any = pickle
    if windows_paths:
        pickle_module = types.ModuleType("pickle_windows_paths")
        pickle_module.__dict__.update(pickle.__dict__)
        pickle_module.Pickler = _WindowsPathPickler
    with _pickled_as_helios_127():
        torch.save(contents, path, pickle_module=pickle_module)


def to_helios_127_layout(ours: dict[str, Any]) -> dict[str, Any]:
    """The same run position in the 1.2.7 layout: no per-rank entries, 1.2.7 RNG keys."""
    contents = {k: v for k, v in ours.items() if k not in ("ranks", "environment")}
    contents["version"] = "1.2.7"
    contents["rng"] = {k: ours["rng"][k] for k in ("torch", "rand", "numpy")}
    return contents


# -- a small job whose result depends on every restored stream -----------------------------


class _Data(hld.DataModule):
    def setup(self) -> None:
        generator = torch.Generator().manual_seed(3)
        dataset = TensorDataset(torch.randn(10, 3, generator=generator), torch.randn(10, 1))
        params = hld.DataLoaderParams(batch_size=4, shuffle=True)
        self._train_dataset = self._create_dataset(dataset, params)


class _Model(hlm.Model):
    def __init__(self) -> None:
        super().__init__("legacy")
        self.loaded: dict[str, Any] | None = None

    def setup(self, fast_init: bool = False) -> None:
        self.net = toys.regression_mlp()
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=0.05, momentum=0.9)

    def state_dict(self) -> dict[str, Any]:
        return {"net": self.net.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any], fast_init: bool = False) -> None:
        self.loaded = state_dict
        self.net.load_state_dict(state_dict["net"])
        self.optimizer.load_state_dict(state_dict["optimizer"])

    def train_step(self, batch: Any, state: hlt.TrainingState) -> None:
        x, y = batch
        shift = random.random() + float(rng.get_default_numpy_rng().generator.random())
        loss = nn.functional.mse_loss(self.net(x) + 0.01 * shift, y)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()


def _fit(root: pathlib.Path, total_steps: int, chkpt_frequency: int) -> _Model:
    model = _Model()
    trainer = hlt.Trainer(
        train_unit="iteration",
        total_steps=total_steps,
        chkpt_frequency=chkpt_frequency,
        chkpt_root=root,
        use_cpu=True,
        enable_deterministic=True,
        print_banner=False,
    )
    assert trainer.fit(model, _Data())
    return model


@pytest.mark.slow
def test_a_helios_127_checkpoint_resumes_exactly_after_migration(tmp_path: pathlib.Path) -> None:
    reference = _fit(tmp_path / "full", total_steps=7, chkpt_frequency=100)

    # A run stopped after 4 iterations (mid epoch 2: 3 batches per epoch) ...
    _fit(tmp_path / "part", total_steps=4, chkpt_frequency=4)
    folder = tmp_path / "part" / "legacy"
    [path] = folder.glob("*.pth")
    assert path.name == "legacy_epoch_2_iter_4.pth"
    ours = checkpoints.load_newest_valid_checkpoint(folder)
    assert ours is not None
    # ... whose checkpoint a Helios 1.2.7 user would have in the 1.2.7 layout.
    write_helios_127_checkpoint(path, to_helios_127_layout(ours[1]))

    # Unmigrated, the file cannot be read: 1.2.7's class name is not a registered type.
    with pytest.raises(pickle.UnpicklingError, match=r"helios\.trainer\.TrainingState"):
        checkpoints.load_newest_valid_checkpoint(folder)

    chkpt_migrator.migrate_checkpoints_to_current_version(folder)
    found = checkpoints.load_newest_valid_checkpoint(folder)
    assert found is not None
    migrated = found[1]
    assert migrated["version"] == helios.__version__
    assert migrated["training_state"] == ours[1]["training_state"]
    assert migrated["training_state"].dataset_iter == 1
    [entry] = migrated["ranks"]
    assert entry["sampler"] == {"epoch": 1, "start_iter": 1}
    assert torch.equal(entry["rng"]["torch"], ours[1]["rng"]["torch"])
    assert entry["rng"]["numpy"] == ours[1]["rng"]["numpy"]

    resumed = _fit(tmp_path / "part", total_steps=7, chkpt_frequency=100)
    assert resumed.loaded is not None  # it really resumed from the migrated file
    for key, value in reference.net.state_dict().items():
        assert torch.equal(value, resumed.net.state_dict()[key]), key


# -- older layouts, the CLI, other systems --------------------------------------------------


def _minimal(state: Any, **extra: Any) -> dict[str, Any]:
    rng.seed_rngs(1)
    return {"training_state": state, "model": {"w": torch.ones(2)}, "rng": _rng127(), **extra}


def _rng127() -> dict[str, Any]:
    state = rng.get_rng_state_dict()
    return {k: state[k] for k in ("torch", "rand", "numpy")}


def test_pre_1_0_and_pre_1_1_files_gain_version_and_a_training_state(
    tmp_path: pathlib.Path,
) -> None:
    fields = dataclasses.asdict(TrainingState(global_epoch=3, current_iteration=9))
    write_helios_127_checkpoint(tmp_path / "old_epoch_3_iter_9.pth", _minimal(fields))
    write_helios_127_checkpoint(
        tmp_path / "v10_epoch_3_iter_9.pth", _minimal(fields, version="1.0.4", opt={"a": 1})
    )
    chkpt_migrator.migrate_checkpoints_to_current_version(tmp_path)
    for name in ("old", "v10"):
        hlt.register_trainer_types_for_safe_load()
        loaded = torch.load(tmp_path / f"{name}_epoch_3_iter_9.pth", weights_only=True)
        assert loaded["version"] == helios.__version__
        assert loaded["training_state"] == TrainingState(global_epoch=3, current_iteration=9)
        assert loaded["ranks"][0]["sampler"] == {"epoch": 2, "start_iter": 0}
    assert loaded["opt"] == {"a": 1}  # plug-in states are kept


def test_a_current_file_is_left_alone(tmp_path: pathlib.Path) -> None:
    current = chkpt_migrator.migrate_checkpoint(_minimal(TrainingState()))
    path = tmp_path / "m_epoch_0_iter_0.pth"
    torch.save(current, path)
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    chkpt_migrator.migrate_checkpoints_to_current_version(tmp_path)
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before
    again = chkpt_migrator.migrate_checkpoint(current)
    assert again.keys() == current.keys()
    assert all(again[k] is current[k] for k in current)


def test_paths_from_windows_are_dropped_with_a_warning(tmp_path: pathlib.Path) -> None:
    contents = _minimal(
        TrainingState(), version="1.2.7", log_path=pathlib.PureWindowsPath("C:/logs/run.log")
    )
    write_helios_127_checkpoint(tmp_path / "w_epoch_1_iter_1.pth", contents, windows_paths=True)
    with pytest.warns(RuntimeWarning, match=r"log_path='C:\\\\logs\\\\run.log' was written on"):
        chkpt_migrator.migrate_checkpoints_to_current_version(tmp_path)
    found = checkpoints.load_newest_valid_checkpoint(tmp_path)
    assert found is not None and "log_path" not in found[1]


def test_local_paths_are_kept(tmp_path: pathlib.Path) -> None:
    log = tmp_path / "logs" / "run.log"
    write_helios_127_checkpoint(
        tmp_path / "p_epoch_1_iter_1.pth", _minimal(TrainingState(), version="1.2.7", log_path=log)
    )
    chkpt_migrator.migrate_checkpoints_to_current_version(tmp_path)
    found = checkpoints.load_newest_valid_checkpoint(tmp_path)
    assert found is not None and found[1]["log_path"] == log


@pytest.mark.parametrize(
    ("contents", "match"),
    [
        ({"model": {}}, r"not a helios checkpoint: missing keys \['training_state', 'rng'\]"),
        ([1, 2], "not a helios checkpoint: expected a dict, found list"),
        (
            {"version": "2.0.0", "training_state": {}, "model": {}, "rng": {}},
            "written by Helios 2.0.0; only checkpoints of Helios 1.x",
        ),
        (
            {"training_state": {"epochs": 1}, "model": {}, "rng": {}},
            r"training_state of .* has unknown fields \['epochs'\]",
        ),
    ],
)
def test_what_cannot_be_migrated_is_named(contents: Any, match: str) -> None:
    with pytest.raises(RuntimeError, match=match):
        chkpt_migrator.migrate_checkpoint(contents)


def test_root_must_be_a_folder(tmp_path: pathlib.Path) -> None:
    with pytest.raises(NotADirectoryError, match="expected root to be a folder"):
        chkpt_migrator.migrate_checkpoints_to_current_version(tmp_path / "missing")


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.run(
        [sys.executable, "-m", "helios.chkpt_migrator", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


@pytest.mark.slow
def test_command_line(tmp_path: pathlib.Path) -> None:
    write_helios_127_checkpoint(
        tmp_path / "c_epoch_1_iter_2.pth", _minimal(TrainingState(global_epoch=1), version="1.2.7")
    )
    result = _run_cli(str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "Migrating checkpoints" in result.stderr
    found = checkpoints.load_newest_valid_checkpoint(tmp_path)
    assert found is not None and found[1]["version"] == helios.__version__

    missing = _run_cli(str(tmp_path / "nope"))
    assert missing.returncode == 1 and "expected root to be a folder" in missing.stderr
    usage = _run_cli()
    assert usage.returncode == 2 and "usage: python -m helios.chkpt_migrator" in usage.stderr
