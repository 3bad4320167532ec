from collections.abc import Callable

import pytest
import torch
import torch.utils.data as tud

from helios.data import SAMPLER_REGISTRY, create_sampler
from helios.data.samplers import (
    ResumableDistributedSampler,
    ResumableRandomSampler,
    ResumableSamplerType,
    ResumableSequentialSampler,
)

BATCH = 3
N = 17

SamplerFactory = Callable[[], ResumableSamplerType]

FACTORIES: dict[str, SamplerFactory] = {
    "random": lambda: ResumableRandomSampler(range(N), seed=11, batch_size=BATCH),
    "sequential": lambda: ResumableSequentialSampler(range(N), batch_size=BATCH),
    "distributed-rank0": lambda: ResumableDistributedSampler(
        range(N), num_replicas=2, rank=0, seed=11, batch_size=BATCH
    ),
    "distributed-rank1-drop": lambda: ResumableDistributedSampler(
        range(N), num_replicas=2, rank=1, seed=11, drop_last=True, batch_size=BATCH
    ),
    "distributed-noshuffle": lambda: ResumableDistributedSampler(
        range(N), num_replicas=3, rank=2, shuffle=False, batch_size=BATCH
    ),
}


def epoch_indices(sampler: ResumableSamplerType, epoch: int) -> list[int]:
    sampler.set_epoch(epoch)
    return list(sampler)


def test_registry_holds_the_four_samplers() -> None:
    assert sorted(SAMPLER_REGISTRY.keys()) == [
        "ResumableDistributedSampler",
        "ResumableRandomSampler",
        "ResumableReplacementSampler",
        "ResumableSequentialSampler",
    ]
    sampler = create_sampler("ResumableRandomSampler", range(4), seed=2, batch_size=2)
    assert isinstance(sampler, ResumableRandomSampler)
    assert sampler.batch_size == 2
    with pytest.raises(KeyError, match="ResumableRandomSampler"):
        create_sampler("NoSuchSampler")


def test_random_sampler_reference_order() -> None:
    sampler = ResumableRandomSampler(range(16), seed=6691)
    sampler.set_epoch(0)
    assert list(sampler) == [12, 7, 0, 5, 3, 1, 9, 4, 2, 14, 6, 15, 13, 11, 8, 10]


def test_random_sampler_reshuffles_per_epoch_deterministically() -> None:
    sampler = ResumableRandomSampler(range(N), seed=3)
    orders = [epoch_indices(sampler, e) for e in range(3)]
    assert all(sorted(order) == list(range(N)) for order in orders)
    assert orders[0] != orders[1] != orders[2]
    assert epoch_indices(ResumableRandomSampler(range(N), seed=3), 1) == orders[1]
    assert epoch_indices(ResumableRandomSampler(range(N), seed=4), 1) != orders[1]


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_order_ignores_and_preserves_global_rng(name: str) -> None:
    torch.manual_seed(0)
    first = epoch_indices(FACTORIES[name](), 2)
    torch.manual_seed(1)
    state = torch.get_rng_state()
    assert epoch_indices(FACTORIES[name](), 2) == first
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_resume_mid_epoch_matches_uninterrupted(name: str) -> None:
    reference = FACTORIES[name]()
    full = epoch_indices(reference, 1)
    following = epoch_indices(reference, 2)
    num_batches = -(-len(full) // BATCH)
    for k in sorted({0, 1, 2, num_batches - 1, num_batches}):
        sampler = FACTORIES[name]()
        sampler.set_epoch(1)
        sampler.start_iter = k
        assert len(sampler) == len(full)
        resumed = list(sampler)
        assert full[: k * BATCH] + resumed == full
        assert sampler.start_iter == 0
        # The epoch after a resumed one is complete again.
        assert epoch_indices(sampler, 2) == following


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_state_dict_round_trips_through_safe_load(name: str, tmp_path) -> None:
    sampler = FACTORIES[name]()
    full = epoch_indices(sampler, 4)
    sampler.set_epoch(4)
    sampler.start_iter = 2
    path = tmp_path / "sampler.pth"
    torch.save(sampler.state_dict(), path)
    state = torch.load(path, weights_only=True)
    assert state == {"epoch": 4, "start_iter": 2}
    assert all(type(value) is int for value in state.values())

    restored = FACTORIES[name]()
    restored.load_state_dict(state)
    assert restored.epoch == 4
    assert restored.start_iter == 2
    assert list(restored) == full[2 * BATCH :]


def test_load_state_dict_names_missing_keys() -> None:
    sampler = ResumableSequentialSampler(range(4))
    with pytest.raises(KeyError, match="start_iter"):
        sampler.load_state_dict({"epoch": 1})


def test_sequential_sampler_skips_whole_batches() -> None:
    sampler = ResumableSequentialSampler(range(7), batch_size=2)
    sampler.start_iter = 2
    assert list(sampler) == [4, 5, 6]
    assert list(sampler) == list(range(7))
    sampler.start_iter = 10
    assert list(sampler) == []
    assert len(sampler) == 7


def test_distributed_shards_are_disjoint_and_cover_the_data() -> None:
    def shards(n: int, drop_last: bool, epoch: int) -> list[list[int]]:
        out = []
        for rank in range(2):
            sampler = ResumableDistributedSampler(
                range(n), num_replicas=2, rank=rank, seed=5, drop_last=drop_last
            )
            out.append(epoch_indices(sampler, epoch))
        return out

    # Odd length, padded: each rank gets 6, one index repeated.
    r0, r1 = shards(11, drop_last=False, epoch=0)
    assert len(r0) == len(r1) == 6
    assert set(r0) | set(r1) == set(range(11))
    assert len(set(r0) & set(r1)) <= 1

    # Odd length, dropped tail: each rank gets 5 distinct indices.
    d0, d1 = shards(11, drop_last=True, epoch=0)
    assert len(d0) == len(d1) == 5
    assert not set(d0) & set(d1)
    assert len(set(d0) | set(d1)) == 10

    # Even length: an exact partition, reshuffled across epochs.
    e0 = shards(12, drop_last=False, epoch=0)
    e1 = shards(12, drop_last=False, epoch=1)
    for r_a, r_b in (e0, e1):
        assert sorted(r_a + r_b) == list(range(12))
    assert e0 != e1


def test_distributed_order_matches_torch_distributed_sampler() -> None:
    ours = ResumableDistributedSampler(range(N), num_replicas=3, rank=1, seed=9)
    theirs: tud.DistributedSampler = tud.DistributedSampler(
        range(N), num_replicas=3, rank=1, seed=9
    )
    ours.set_epoch(3)
    theirs.set_epoch(3)
    assert list(ours) == list(theirs)
    assert len(ours) == len(theirs)


def test_set_epoch_reseeds_attached_generator() -> None:
    sampler = ResumableRandomSampler(range(4), seed=7)
    generator = torch.Generator()
    sampler.attach_generator(generator)
    assert generator.initial_seed() == 7
    sampler.set_epoch(3)
    assert generator.initial_seed() == 10

    sequential = ResumableSequentialSampler(range(4))
    sequential.attach_generator(generator, seed=100)
    sequential.set_epoch(2)
    assert generator.initial_seed() == 102

    distributed = ResumableDistributedSampler(range(4), num_replicas=1, rank=0, seed=20)
    distributed.attach_generator(generator)
    distributed.load_state_dict({"epoch": 5, "start_iter": 0})
    assert generator.initial_seed() == 25

    # Another rank gets another stream, so workers do not repeat each other's draws.
    rank1 = ResumableDistributedSampler(range(4), num_replicas=2, rank=1, seed=20)
    rank1.attach_generator(generator)
    rank1.set_epoch(5)
    assert generator.initial_seed() == 25 + 2**32


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match=r"batch_size to be >= 1, but received 0"):
        ResumableRandomSampler(range(4), batch_size=0)
    with pytest.raises(TypeError, match="batch_size to be an int"):
        ResumableSequentialSampler(range(4), batch_size=2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch_size"):
        ResumableDistributedSampler(range(4), num_replicas=1, rank=0, batch_size=0)
    with pytest.raises(TypeError, match="seed to be an int"):
        ResumableRandomSampler(range(4), seed="1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="data_source"):
        ResumableRandomSampler(iter(range(4)))  # type: ignore[arg-type]

    sampler = ResumableSequentialSampler(range(4))
    with pytest.raises(ValueError, match=r"start_iter to be >= 0, but received -1"):
        sampler.start_iter = -1
    with pytest.raises(TypeError, match="start_iter to be an int"):
        sampler.start_iter = 1.5  # type: ignore[assignment]
    with pytest.raises(ValueError, match="epoch to be >= 0"):
        sampler.set_epoch(-2)
    with pytest.raises(TypeError, match=r"generator to be a torch\.Generator"):
        sampler.attach_generator(0)  # type: ignore[arg-type]
