"""``Trainer(random_seed=...)`` changes the order the loaders shuffle in, and a resumed run
keeps the order its checkpoint was written with (a checkpoint from before the rule, too).

The runs train ``resume_job``'s model (10 samples, shuffled batches of 4) and record the
sample ids of every batch; the expected order of epoch ``e`` is read from a loader built
with :py:func:`helios.data.create_dataloader` and the seed it should have.
"""

from __future__ import annotations

import pathlib
from typing import Any

import pytest
import resume_job as job
import torch

import helios.data as hld
import helios.trainer as hlt
from helios.core import rng

EPOCHS = 3


def _fit(
    workdir: pathlib.Path, crash_at: int | None = None, **options: Any
) -> tuple[bool, job.ResumeModel]:
    model = job.ResumeModel(crash_at=crash_at)
    trainer = job.make_trainer(workdir, "epoch", EPOCHS, 1, **options)
    return trainer.fit(model, job.ResumeDataModule()), model


def _order(seed: int, epoch: int) -> list[list[int]]:
    """The sample ids of each batch of ``epoch`` for a loader shuffled by ``seed``."""
    loader, sampler = hld.create_dataloader(
        job.CountingDataset(), random_seed=seed, batch_size=job.BATCH_SIZE, shuffle=True
    )
    sampler.set_epoch(epoch - 1)
    return [ids.tolist() for ids, _, _ in loader]


def _batches(model: job.ResumeModel) -> dict[int, list[list[int]]]:
    """The sample ids of each batch, by epoch (the last record of a batch wins)."""
    by_position: dict[int, tuple[int, list[int]]] = {}
    for record in model.records:
        by_position[record["gi"]] = (record["epoch"], record["ids"])
    epochs: dict[int, list[list[int]]] = {}
    for _, (epoch, ids) in sorted(by_position.items()):
        epochs.setdefault(epoch, []).append(ids)
    return epochs


def test_the_run_seed_changes_the_shuffle_order(tmp_path: pathlib.Path) -> None:
    orders = {}
    for seed in (1, 2, None, rng.get_default_seed()):
        ok, model = _fit(tmp_path / str(seed), random_seed=seed)
        assert ok
        orders[seed] = _batches(model)
    assert orders[1][1][0] != orders[2][1][0]  # different first batches
    default = rng.get_default_seed()
    for seed, expected_seed in ((1, 1), (2, 2), (None, default), (default, default)):
        assert orders[seed] == {e: _order(expected_seed, e) for e in range(1, EPOCHS + 1)}


class OwnSeed(job.ResumeDataModule):
    """A split with a seed of its own keeps it, whatever the run's seed."""

    def setup(self) -> None:
        params = hld.DataLoaderParams(batch_size=job.BATCH_SIZE, shuffle=True, random_seed=7)
        self._train_dataset = self._create_dataset(job.CountingDataset(), params)


def test_a_split_with_its_own_seed_keeps_it(tmp_path: pathlib.Path) -> None:
    model = job.ResumeModel()
    trainer = job.make_trainer(tmp_path, "epoch", 1, 1, random_seed=3, valid_frequency=None)
    assert trainer.fit(model, OwnSeed())
    assert _batches(model)[1] == _order(7, 1)


def test_a_resumed_run_keeps_its_seeds_order(tmp_path: pathlib.Path) -> None:
    ok, reference = _fit(tmp_path / "reference", random_seed=5)
    assert ok
    # Crash in epoch 2 (batch 5 of 9); resume with another seed: the checkpoint's wins.
    workdir = tmp_path / "resumed"
    ok, _ = _fit(workdir, crash_at=5, random_seed=5)
    assert not ok
    hlt.register_trainer_types_for_safe_load()
    newest = hlt.find_last_checkpoint(job.checkpoint_dir(workdir))
    assert newest is not None
    assert torch.load(newest, weights_only=True)["loader_seed"] == {"seed": 5}
    ok, resumed = _fit(workdir, random_seed=11)
    assert ok
    assert _batches(resumed) == {e: _order(5, e) for e in (2, 3)}
    for key, value in reference.net.state_dict().items():
        assert torch.equal(resumed.net.state_dict()[key], value), key


def test_a_checkpoint_from_before_the_rule_resumes_with_the_order_it_had(
    tmp_path: pathlib.Path,
) -> None:
    # A run with random_seed=5 whose checkpoints lack the loader_seed entry, as every
    # checkpoint of Helios 1.2.7 and of helios before this rule: its loaders shuffled by
    # their DataLoaderParams seed (the default), and the resumed run goes on that way.
    ok, _ = _fit(tmp_path, crash_at=5, random_seed=5)
    assert not ok
    hlt.register_trainer_types_for_safe_load()
    for path in job.checkpoint_dir(tmp_path).glob("*.pth"):
        contents = torch.load(path, weights_only=True)
        del contents["loader_seed"]
        torch.save(contents, path)
    ok, resumed = _fit(tmp_path, random_seed=5)
    assert ok
    default = rng.get_default_seed()
    assert _batches(resumed) == {e: _order(default, e) for e in (2, 3)}


@pytest.mark.parametrize("seed", [None, 6691])
def test_checkpoints_of_the_default_seed_are_unchanged(
    seed: int | None, tmp_path: pathlib.Path
) -> None:
    ok, _ = _fit(tmp_path, random_seed=seed)
    assert ok
    hlt.register_trainer_types_for_safe_load()
    newest = hlt.find_last_checkpoint(job.checkpoint_dir(tmp_path))
    assert newest is not None
    assert "loader_seed" not in torch.load(newest, weights_only=True)
