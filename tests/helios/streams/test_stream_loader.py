"""Loading streams: the split among ranks and workers, exact positions, streams without state.

Real loader worker processes; ranks are simulated by building each rank's stream with its
rank and world size (the torchrun tests run real ranks).
"""

from __future__ import annotations

import itertools
import json
import pathlib
from collections.abc import Iterator
from typing import Any

import pytest
import stream_job as job
import torch
from torch.utils.data import IterableDataset

import helios.data as hld
from helios.core import rng
from helios.data.stream_loader import StreamLoader, StreamLoaderMismatchError
from helios.data.streams import ResumableStream


class CountingStream(IterableDataset):
    """The ids 0..size-1 in order, with no split of its own and no state."""

    def __init__(self, size: int = 40) -> None:
        self.size = size
        self.read = 0

    def __iter__(self) -> Iterator[torch.Tensor]:
        for i in range(self.size):
            self.read += 1
            yield torch.tensor([float(i), float(torch.rand(()))])


@pytest.fixture(autouse=True)
def _seeded() -> None:
    rng.seed_rngs(0)  # the stream draws from the helios default generator too


def _loader(
    dataset: IterableDataset, workers: int, rank: int = 0, world_size: int = 1, **kwargs: Any
) -> tuple[Any, ResumableStream]:
    loader, stream = hld.create_dataloader(dataset, batch_size=4, num_workers=workers, **kwargs)
    assert isinstance(stream, ResumableStream)
    # A rank of a world of world_size processes (no process group needed to read a part).
    stream.rank, stream.world_size = rank, world_size
    return loader, stream


def _ids(batches: list[Any]) -> list[int]:
    return [int(i) for batch in batches for i in batch[0]]


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("make", [job.NoisyStream, CountingStream], ids=["select_part", "strided"])
def test_ranks_and_workers_read_disjoint_parts_that_cover_the_epoch(
    workers: int, make: Any
) -> None:
    seen: list[int] = []
    for rank in range(2):
        loader, stream = _loader(make(), workers, rank, world_size=2)
        stream.set_epoch(1)
        batches = list(loader)
        if make is CountingStream:
            seen += [int(row[0]) for batch in batches for row in batch]
        else:
            seen += _ids(batches)
    size = make().size
    assert sorted(seen) == list(range(size)), "every sample once, in every split"


@pytest.mark.parametrize("workers", [0, 2])
def test_a_saved_position_resumes_the_same_samples_and_augmentations(workers: int) -> None:
    rng.seed_rngs(0)
    loader, stream = _loader(job.NoisyStream(), workers)
    stream.set_epoch(2)
    uninterrupted = list(loader)

    rng.seed_rngs(0)
    stream.set_epoch(2)
    iterator = iter(loader)
    before = [next(iterator) for _ in range(5)]
    saved, saved_rng = loader.state_dict(), rng.get_rng_state_dict()
    del iterator

    resumed_loader, _ = _loader(job.NoisyStream(), workers)
    resumed_loader.load_state_dict(saved)
    rng.load_rng_state_dict(saved_rng)  # the trainer restores the main process's RNGs
    after = list(resumed_loader)
    assert len(before) + len(after) == len(uninterrupted) == 12
    for expected, got in zip(uninterrupted, before + after):
        for a, b in zip(expected, got):
            assert torch.equal(a, b)


@pytest.mark.filterwarnings("ignore:This DataLoader will create 3 worker processes")
@pytest.mark.parametrize("stop", [1, 5, 9, 12])
def test_readers_of_unequal_length_resume_in_their_turn(stop: int) -> None:
    # 50 samples, 3 readers of 17, 17 and 16 samples: 5, 5 and 4 batches (the last ones
    # short); reader 2 is exhausted after batch 12 of 14.
    loader, _ = _loader(job.NoisyStream(size=50), 3)
    uninterrupted = [batch[0].tolist() for batch in loader]
    iterator = iter(loader)
    before = [next(iterator)[0].tolist() for _ in range(stop)]
    saved = loader.state_dict()
    del iterator
    resumed, _ = _loader(job.NoisyStream(size=50), 3)
    resumed.load_state_dict(saved)
    assert before + [batch[0].tolist() for batch in resumed] == uninterrupted


def test_a_position_is_restored_not_replayed() -> None:
    loader, _ = _loader(job.NoisyStream(), 0)
    iterator = iter(loader)
    for _ in range(8):
        next(iterator)
    saved = loader.state_dict()
    resumed, _ = _loader(job.NoisyStream(), 0)
    dataset = resumed.stream.dataset
    made = []
    original = dataset.__class__.__iter__

    def counting(self: Any) -> Iterator[Any]:
        for sample in original(self):
            made.append(int(sample[0]))
            yield sample

    dataset.__class__ = type("Counted", (job.NoisyStream,), {"__iter__": counting})
    resumed.load_state_dict(saved)
    rest = list(resumed)
    assert len(rest) == 4 and made == _ids(rest), "only the samples after the position"


def test_workers_draw_per_batch_seeded_streams_that_do_not_depend_on_the_run() -> None:
    rng.seed_rngs(1)
    first = list(_loader(job.NoisyStream(), 2)[0])
    rng.seed_rngs(2)  # the main process's state does not reach the workers' draws
    second = list(_loader(job.NoisyStream(), 2)[0])
    assert all(torch.equal(a[1], b[1]) for a, b in zip(first, second))
    other_epoch = _loader(job.NoisyStream(), 2)
    other_epoch[1].set_epoch(1)
    assert not torch.equal(first[0][1], next(iter(other_epoch[0]))[1])


@pytest.mark.parametrize("resume", ["restart", "skip"])
def test_a_stream_without_state_restarts_or_skips_as_chosen(resume: str) -> None:
    loader, _ = _loader(CountingStream(), 2, stream_resume=resume)
    uninterrupted = [int(row[0]) for batch in loader for row in batch]
    iterator = iter(loader)
    before = [int(row[0]) for batch in itertools.islice(iterator, 4) for row in batch]
    saved = loader.state_dict()
    del iterator
    resumed, _ = _loader(CountingStream(), 2, stream_resume=resume)
    resumed.load_state_dict(saved)
    after = [int(row[0]) for batch in resumed for row in batch]
    if resume == "skip":
        assert before + after == uninterrupted
    else:
        assert after == uninterrupted, "the epoch's stream starts again"


def test_a_position_saved_by_another_split_is_refused() -> None:
    loader, _ = _loader(job.NoisyStream(), 2)
    iterator = iter(loader)
    next(iterator)
    saved = loader.state_dict()
    del iterator
    other, _ = _loader(job.NoisyStream(), 1)
    with pytest.raises(StreamLoaderMismatchError, match="1 process\\(es\\) with 2 loader worker"):
        other.load_state_dict(saved)
    ranks, _ = _loader(job.NoisyStream(), 2, rank=1, world_size=2)
    with pytest.raises(StreamLoaderMismatchError, match="rank 1 of 2 with 2"):
        ranks.load_state_dict(saved)


def test_streams_show_no_length_and_refuse_what_only_indices_allow() -> None:
    loader, _ = _loader(job.NoisyStream(), 0)
    with pytest.raises(TypeError):
        len(loader)
    with pytest.raises(ValueError, match="shuffle=True cannot shuffle NoisyStream"):
        hld.create_dataloader(job.NoisyStream(), shuffle=True)
    sampler = hld.samplers.ResumableSequentialSampler(range(3))
    with pytest.raises(ValueError, match="a sampler cannot draw from NoisyStream"):
        hld.DataLoaderParams(sampler=sampler) and hld.create_dataloader(
            job.NoisyStream(), sampler=sampler
        )
    with pytest.raises(ValueError, match="stream_resume to be one of"):
        hld.create_dataloader(job.NoisyStream(), stream_resume="replay")
    with pytest.raises(TypeError, match=r"or a torch\.utils\.data\.IterableDataset"):
        hld.create_dataloader(iter(range(3)))  # type: ignore[arg-type]


def test_replacement_sampler_resumes_at_any_position_without_drawing_the_past() -> None:
    sampler = hld.create_sampler(
        "ResumableReplacementSampler", range(10), num_samples=10**10, seed=3, batch_size=4
    )
    sampler.set_epoch(1)
    drawn = list(itertools.islice(iter(sampler), 200_000))
    assert set(drawn) == set(range(10)) and len(drawn) == 200_000, "with replacement"
    sampler.load_state_dict({"epoch": 1, "start_iter": 40_000})
    assert list(itertools.islice(iter(sampler), 100)) == drawn[160_000:160_100]
    sampler.load_state_dict({"epoch": 1, "start_iter": 10**9})  # 4e9 samples in: instant
    assert 0 <= next(iter(sampler)) < 10
    assert list(itertools.islice(iter(sampler), 5)) == drawn[:5], "the skip is for one pass"
    sampler.set_epoch(2)
    assert list(itertools.islice(iter(sampler), 100)) != drawn[:100]
    small = hld.samplers.ResumableReplacementSampler(range(5), seed=1)
    assert len(small) == 5 == len(list(small))
    other_rank = hld.samplers.ResumableReplacementSampler(range(5), seed=1, rank=1)
    assert list(other_rank) != list(small)
    with pytest.raises(ValueError, match="num_samples to be >= 1"):
        hld.samplers.ResumableReplacementSampler(range(5), num_samples=0)


def test_replacement_sampler_drives_a_loader_that_resumes_mid_epoch() -> None:
    data = torch.arange(100.0)
    sampler = hld.samplers.ResumableReplacementSampler(data, num_samples=64, batch_size=8)
    loader, _ = hld.create_dataloader(data, batch_size=8, sampler=sampler)
    sampler.set_epoch(0)
    full = [batch.tolist() for batch in loader]
    sampler.load_state_dict({"epoch": 0, "start_iter": 3})
    assert [batch.tolist() for batch in loader] == full[3:]


def _hugging_face_stream(folder: Any) -> Any:
    import datasets

    folder.mkdir()
    for shard in range(4):
        rows = [json.dumps({"id": shard * 10 + i}) for i in range(10)]
        (folder / f"part-{shard}.jsonl").write_text("\n".join(rows) + "\n")
    files = sorted(str(path) for path in folder.glob("*.jsonl"))
    stream = datasets.load_dataset("json", data_files=files, split="train", streaming=True)
    return stream.with_format("torch")


@pytest.mark.slow
def test_a_hugging_face_stream_is_split_and_resumed_per_rank_and_worker(
    tmp_path: pathlib.Path,
) -> None:
    """Its shards split among 2 ranks (helios) and 2 workers each (itself); its own state."""
    hf = _hugging_face_stream(tmp_path / "shards")

    def rank_loader(rank: int) -> StreamLoader:
        stream = ResumableStream(hf, batch_size=3, rank=rank, world_size=2)
        return StreamLoader(stream, batch_size=3, num_workers=2)

    seen: list[int] = []
    for rank in range(2):
        uninterrupted = [batch["id"].tolist() for batch in rank_loader(rank)]
        seen += [i for ids in uninterrupted for i in ids]
        loader = rank_loader(rank)
        iterator = iter(loader)
        before = [next(iterator)["id"].tolist() for _ in range(3)]
        saved = loader.state_dict()
        del iterator
        resumed = rank_loader(rank)
        resumed.load_state_dict(saved)
        after = [batch["id"].tolist() for batch in resumed]
        assert before + after == uninterrupted, f"rank {rank} resumed at its position"
    assert sorted(seen) == list(range(40)), "every row once, in 4 parts"
