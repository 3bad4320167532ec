"""Exact resume with data-loader worker processes that draw random augmentations."""

from __future__ import annotations

import pathlib
import random
from typing import Any

import numpy as np
import pytest
import resume_job as job
import torch

import helios.data as hld
import toys
from helios.core import rng


class AugmentedDataset(toys.IndexedSamples):
    """The shared samples ``(id, x, y)`` whose ``x`` gets noise from torch, NumPy and ``random``."""

    def __init__(self, size: int = job.NUM_SAMPLES) -> None:
        super().__init__(size)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        noise = torch.rand(3) + float(np.random.rand()) + random.random()
        noise = noise + float(rng.get_default_numpy_rng().generator.random())
        return torch.tensor(index), self.x[index] + 0.1 * noise, self.y[index]


class WorkerDataModule(hld.DataModule):
    def __init__(self, num_workers: int, replacement: bool = False) -> None:
        super().__init__()
        self.num_workers = num_workers
        self.replacement = replacement

    def setup(self) -> None:
        dataset = AugmentedDataset()
        sampler = None
        if self.replacement:  # minGPT's sampling: many more draws than samples
            sampler = hld.create_sampler(
                "ResumableReplacementSampler", dataset, num_samples=10**9, seed=5,
                batch_size=job.BATCH_SIZE,
            )  # fmt: skip
        params = hld.DataLoaderParams(
            batch_size=job.BATCH_SIZE,
            shuffle=not self.replacement,
            num_workers=self.num_workers,
            sampler=sampler,
        )
        self._train_dataset = self._create_dataset(dataset, params)


def _fit(
    workdir: pathlib.Path, num_workers: int, crash_at: int | None = None, replacement: bool = False
) -> tuple[bool, Any]:
    model = job.ResumeModel(accumulation=1, crash_at=crash_at)
    # A checkpoint every iteration (= batch): a crash resumes inside its epoch.
    trainer = job.make_trainer(workdir, "iteration", 12, 1, valid_frequency=None)
    return trainer.fit(model, WorkerDataModule(num_workers, replacement)), model


def _inputs(model: Any) -> dict[int, list[float]]:
    return {record["gi"]: record["draws"] for record in model.records}


@pytest.mark.slow
@pytest.mark.parametrize("crash_at", [2, 5, 12])
def test_worker_augmentations_survive_a_mid_epoch_resume(
    crash_at: int, tmp_path: pathlib.Path
) -> None:
    ok, uninterrupted = _fit(tmp_path / "reference", num_workers=2)
    assert ok
    crashed, _ = _fit(tmp_path / "run", num_workers=2, crash_at=crash_at)
    assert crashed is False
    ok, resumed = _fit(tmp_path / "run", num_workers=2)
    assert ok
    assert resumed.records[0]["gi"] == crash_at, "the run resumed where it crashed"
    for key, value in uninterrupted.net.state_dict().items():
        assert torch.equal(resumed.net.state_dict()[key], value), f"weights differ in {key}"
    # Every batch the resumed run trained saw the same augmented inputs (same loss).
    expected = _inputs(uninterrupted)
    for gi, draws in _inputs(resumed).items():
        assert draws[3] == expected[gi][3], f"batch {gi} differs"


@pytest.mark.slow
def test_sampling_with_replacement_resumes_inside_its_endless_epoch(tmp_path: pathlib.Path) -> None:
    ok, uninterrupted = _fit(tmp_path / "reference", num_workers=2, replacement=True)
    assert ok
    drawn = [i for record in uninterrupted.records for i in record["ids"]]
    assert len(set(drawn)) < len(drawn), "some samples drawn more than once"
    crash_at = random.randint(2, 11)
    crashed, _ = _fit(tmp_path / "run", num_workers=2, crash_at=crash_at, replacement=True)
    assert crashed is False
    ok, resumed = _fit(tmp_path / "run", num_workers=2, replacement=True)
    assert ok
    assert resumed.records[0]["gi"] == crash_at, "the run resumed where it crashed"
    assert [r["epoch"] for r in resumed.records] == [1] * len(resumed.records), "one epoch"
    assert resumed.records == uninterrupted.records[crash_at - 1 :], "same ids and draws"
    for key, value in uninterrupted.net.state_dict().items():
        assert torch.equal(resumed.net.state_dict()[key], value), f"weights differ in {key}"


@pytest.mark.slow
def test_worker_augmentations_do_not_depend_on_the_number_of_workers(
    tmp_path: pathlib.Path,
) -> None:
    ok, one = _fit(tmp_path / "one", num_workers=1)
    assert ok
    ok, three = _fit(tmp_path / "three", num_workers=3)
    assert ok
    for key, value in one.net.state_dict().items():
        assert torch.equal(three.net.state_dict()[key], value), f"weights differ in {key}"


def test_sample_seeds_depend_only_on_seed_epoch_and_index() -> None:
    from helios.data.datamodule import sample_seed

    assert sample_seed(1, 2, 3) == sample_seed(1, 2, 3)
    assert len({sample_seed(1, e, i) for e in range(5) for i in range(50)}) == 250
    assert sample_seed(1, 2, 3) != sample_seed(2, 2, 3)
    assert 0 <= sample_seed(10**12, 10**6, 10**9) < 2**63
