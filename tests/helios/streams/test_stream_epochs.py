"""Epochs over a stream: a pass ends when the stream runs out, in either unit, and what the
console shows has no made-up total."""

from __future__ import annotations

import collections
import pathlib

import pytest
import stream_job as job

import helios.data as hld
import helios.trainer as hlt

BATCHES_PER_EPOCH = job.NUM_SAMPLES // job.BATCH_SIZE


class StreamsWithValidation(job.StreamDataModule):
    """The training stream, and a shorter stream to validate on."""

    def setup(self) -> None:
        super().setup()
        params = hld.DataLoaderParams(batch_size=job.BATCH_SIZE)
        self._valid_dataset = self._create_dataset(job.NoisyStream(size=10), params)


def _fit(root: pathlib.Path, unit: str, total_steps: int) -> job.StreamModel:
    model = job.StreamModel()
    trainer = hlt.Trainer(
        train_unit=unit,
        total_steps=total_steps,
        valid_frequency=1 if unit == "epoch" else BATCHES_PER_EPOCH,
        chkpt_root=root,
        use_cpu=True,
        enable_deterministic=True,
        enable_progress_bar=True,
        print_banner=False,
    )
    assert trainer.fit(model, StreamsWithValidation(workers=0))
    return model


def _ids_by_epoch(model: job.StreamModel) -> dict[int, list[int]]:
    ids: dict[int, list[int]] = collections.defaultdict(list)
    for record in model.records:
        ids[record["epoch"]].extend(record["ids"])
    return ids


def test_an_epoch_is_one_pass_over_the_stream(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = _fit(tmp_path, "epoch", 2)
    ids = _ids_by_epoch(model)
    assert sorted(ids) == [1, 2]
    for epoch, seen in ids.items():
        assert sorted(seen) == list(range(job.NUM_SAMPLES)), f"epoch {epoch}: every id once"
    assert ids[1] != ids[2], "the stream's order changes with the epoch"
    output = capsys.readouterr()
    assert f"Training finished at epoch 2, iteration {2 * BATCHES_PER_EPOCH}" in output.out
    assert "2/2" in output.err, "the bar of epochs has its total"
    assert f"/{BATCHES_PER_EPOCH}" not in output.err, "no total for the batches of a stream"


def test_iterations_run_across_the_ends_of_the_stream(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    steps = 2 * BATCHES_PER_EPOCH + 5
    model = _fit(tmp_path, "iteration", steps)
    ids = _ids_by_epoch(model)
    assert [r["gi"] for r in model.records] == list(range(1, steps + 1))
    assert sorted(ids) == [1, 2, 3], "the stream ran out twice, a new epoch read it again"
    assert sorted(ids[1]) == sorted(ids[2]) == list(range(job.NUM_SAMPLES))
    assert len(ids[3]) == 5 * job.BATCH_SIZE and len(set(ids[3])) == len(ids[3])
    assert f"{steps}/{steps}" in capsys.readouterr().err, "iterations against total_steps"
