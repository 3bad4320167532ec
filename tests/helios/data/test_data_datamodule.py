import dataclasses
import random
import subprocess
import sys
import warnings
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.utils.data as tud

import helios.data as hld
from helios.core import rng
from helios.data.samplers import (
    ResumableDistributedSampler,
    ResumableRandomSampler,
    ResumableSequentialSampler,
)


class RangeDataset(tud.Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> int:
        return index


class NoisyDataset(RangeDataset):
    """Returns the index and a draw from the global torch RNG (an augmentation)."""

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor]:
        return index, torch.rand(())


class WorkerSeedDataset(RangeDataset):
    def __getitem__(self, index: int) -> tuple[int, int, float, float, float]:
        default = rng.get_default_numpy_rng().generator.random()
        legacy = np.random.random()
        return index, torch.initial_seed(), random.random(), legacy, default


def batches(loader: tud.DataLoader) -> list[list[Any]]:
    return [[t.tolist() for t in batch] for batch in loader]


@pytest.mark.slow
def test_init_exports_and_no_heavy_imports() -> None:
    code = (
        "import sys, helios.data as hld\n"
        "assert hld.transforms.ToImageTensor and hld.functional.load_image\n"
        "assert hld.samplers.ResumableRandomSampler\n"
        "heavy = ['torchvision', 'matplotlib', 'tensorboard', 'cv2', 'optuna', 'onnx']\n"
        "print([m for m in heavy if m in sys.modules])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
    for name in (
        "COLLATE_FN_REGISTRY",
        "DATASET_REGISTRY",
        "SAMPLER_REGISTRY",
        "TRANSFORM_REGISTRY",
        "create_sampler",
        "create_transform",
    ):
        assert name in hld.__all__


def test_shuffled_loader_resumes_exactly() -> None:
    dataset = NoisyDataset(10)

    def make() -> tuple[tud.DataLoader, Any]:
        return hld.create_dataloader(dataset, random_seed=3, batch_size=3, shuffle=True)

    torch.manual_seed(0)
    loader, sampler = make()
    assert isinstance(sampler, ResumableRandomSampler)
    uninterrupted: list[list[Any]] = []
    saved = None
    for epoch in range(3):
        sampler.set_epoch(epoch)
        for step, batch in enumerate(loader):
            uninterrupted.append([t.tolist() for t in batch])
            if epoch == 1 and step == 1:
                # What a checkpoint taken after this batch holds.
                saved = (len(uninterrupted), torch.get_rng_state(), step + 1)
    assert saved is not None
    done, rng_state, dataset_iter = saved

    # A new process: fresh loader, restored global RNG and sampler position.
    torch.manual_seed(123)
    loader, sampler = make()
    torch.set_rng_state(rng_state)
    sampler.load_state_dict({"epoch": 1, "start_iter": dataset_iter})
    resumed = uninterrupted[:done]
    for epoch in range(1, 3):
        sampler.set_epoch(epoch)
        resumed += batches(loader)
    assert resumed == uninterrupted
    assert len(loader) == 4


def test_iterating_a_loader_does_not_touch_global_rng() -> None:
    loader, sampler = hld.create_dataloader(RangeDataset(8), batch_size=2, shuffle=True)
    state = torch.get_rng_state()
    for epoch in range(2):
        sampler.set_epoch(epoch)
        assert len(batches(loader)) == 4
    assert torch.equal(torch.get_rng_state(), state)


def test_worker_seeds_depend_only_on_seed_epoch_and_sample() -> None:
    dataset = WorkerSeedDataset(8)

    def run(epoch: int, start_iter: int = 0) -> dict[int, tuple]:
        loader, sampler = hld.create_dataloader(
            dataset, random_seed=42, batch_size=2, num_workers=2
        )
        sampler.set_epoch(epoch)
        sampler.start_iter = start_iter
        out = {}
        for batch in loader:
            for row in zip(*[t.tolist() for t in batch]):
                out[row[0]] = row[1:]
        return out

    torch.manual_seed(0)
    first = run(epoch=1)
    torch.manual_seed(1)
    again = run(epoch=1)
    assert first == again
    torch_seeds = {values[0] for values in first.values()}
    assert len(torch_seeds) == len(first)  # one per sample, whichever worker loads it
    # Python, NumPy legacy and helios default RNG differ between samples too.
    assert len({values[1:] for values in first.values()}) == len(first)
    assert {values[0] for values in run(epoch=2).values()}.isdisjoint(torch_seeds)
    # Resuming mid-epoch gives every sample it loads the seeds it had before.
    resumed = run(epoch=1, start_iter=1)
    assert resumed and all(first[index] == values for index, values in resumed.items())


def test_create_dataloader_picks_sampler_and_passes_settings() -> None:
    dataset = RangeDataset(7)
    loader, sampler = hld.create_dataloader(dataset, batch_size=2, drop_last=True)
    assert isinstance(sampler, ResumableSequentialSampler)
    assert sampler.batch_size == 2
    assert loader.batch_size == 2
    assert batches(loader) == [[0, 1], [2, 3], [4, 5]]
    assert loader.collate_fn is tud.default_collate

    given = ResumableDistributedSampler(
        dataset, num_replicas=2, rank=1, shuffle=False, batch_size=2
    )
    loader, sampler = hld.create_dataloader(
        dataset, batch_size=2, sampler=given, collate_fn=lambda items: items
    )
    assert sampler is given
    assert list(loader) == [[1, 3], [5, 0]]

    loader, _ = hld.create_dataloader(dataset, num_workers=2, debug_mode=True)
    assert loader.num_workers == 0


def test_pin_memory_only_with_cuda() -> None:
    loader, _ = hld.create_dataloader(RangeDataset(4), pin_memory=True)
    assert loader.pin_memory == torch.cuda.is_available()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(batches(loader)) == 4


def test_create_dataloader_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="expected dataset to be non-empty"):
        hld.create_dataloader(RangeDataset(0))
    with pytest.raises(TypeError, match="expected dataset to be a map-style"):
        hld.create_dataloader(iter(range(3)))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"batch_size to be >= 1, but received 0"):
        hld.create_dataloader(RangeDataset(3), batch_size=0)
    with pytest.raises(ValueError, match="num_workers to be >= 0"):
        hld.create_dataloader(RangeDataset(3), num_workers=-1)
    with pytest.raises(TypeError, match="random_seed to be an int"):
        hld.create_dataloader(RangeDataset(3), random_seed=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"sampler to derive from one of .* SequentialSampler"):
        hld.create_dataloader(
            RangeDataset(3),
            sampler=tud.SequentialSampler(range(3)),  # type: ignore[arg-type]
        )
    with pytest.raises(ValueError, match=r"sampler\.batch_size \(2\) to equal batch_size \(3\)"):
        hld.create_dataloader(
            RangeDataset(3), batch_size=3, sampler=ResumableSequentialSampler(range(3), 2)
        )
    with pytest.raises(TypeError, match="collate_fn to be callable"):
        hld.create_dataloader(RangeDataset(3), collate_fn=3)  # type: ignore[arg-type]


def test_distributed_loader_passes_batch_size(tmp_path) -> None:
    class Module(hld.DataModule):
        def setup(self) -> None:
            self._train_dataset = self._create_dataset(
                RangeDataset(10), {"batch_size": 3, "shuffle": True}
            )

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        _, sampler = hld.create_dataloader(
            RangeDataset(10), random_seed=4, batch_size=3, shuffle=True, is_distributed=True
        )
        assert isinstance(sampler, ResumableDistributedSampler)
        assert sampler.batch_size == 3
        full = list(ResumableDistributedSampler(RangeDataset(10), seed=4))
        sampler.start_iter = 2  # batches, not samples
        assert list(sampler) == full[6:]

        module = Module()
        module.setup()
        module.is_distributed = True
        loader_and_sampler = module.train_dataloader()
        assert loader_and_sampler is not None
        assert isinstance(loader_and_sampler[1], ResumableDistributedSampler)
        assert module._train_dataset is not None
        assert module._train_dataset.params.is_distributed is None
    finally:
        dist.destroy_process_group()


def test_dataloader_params_round_trip_and_errors() -> None:
    params = hld.DataLoaderParams()
    assert params.to_dict() == {
        "random_seed": 6691,
        "batch_size": 1,
        "shuffle": False,
        "num_workers": 0,
        "pin_memory": True,
        "drop_last": False,
        "debug_mode": False,
        "is_distributed": None,
        "sampler": None,
        "collate_fn": None,
        "stream_resume": "restart",
    }
    sampler = ResumableSequentialSampler(range(3))
    table = {"batch_size": 4, "shuffle": True, "sampler": sampler}
    restored = hld.DataLoaderParams.from_dict(table)
    assert restored.batch_size == 4 and restored.shuffle and restored.sampler is sampler
    assert hld.DataLoaderParams.from_dict(restored.to_dict()) == restored
    with pytest.raises(ValueError, match=r"unknown DataLoaderParams keys \['bogus'\]"):
        hld.DataLoaderParams.from_dict({"batch_size": 2, "bogus": 1})


def test_dataset_split_from_str() -> None:
    assert hld.DatasetSplit.from_str("train") is hld.DatasetSplit.TRAIN
    assert hld.DatasetSplit.from_str("valid") is hld.DatasetSplit.VALID
    assert hld.DatasetSplit.from_str("test") is hld.DatasetSplit.TEST
    with pytest.raises(ValueError, match="but received 'Train'"):
        hld.DatasetSplit.from_str("Train")


class DataModuleScaleCollate:
    def __init__(self, factor: int) -> None:
        self.factor = factor

    def __call__(self, items: list[int]) -> torch.Tensor:
        return torch.tensor(items) * self.factor


def datamodule_offset_collate_factory(offset: int) -> Any:
    return lambda items: torch.tensor(items) + offset


def test_collate_and_dataset_registries() -> None:
    assert hld.create_collate_fn("default_collate") is tud.default_collate
    hld.COLLATE_FN_REGISTRY.register(DataModuleScaleCollate)
    hld.COLLATE_FN_REGISTRY.register(datamodule_offset_collate_factory)
    scale = hld.create_collate_fn("DataModuleScaleCollate", 10)
    assert scale([1, 2]).tolist() == [10, 20]
    offset = hld.create_collate_fn("datamodule_offset_collate_factory", offset=5)
    assert offset([1, 2]).tolist() == [6, 7]
    assert (
        hld.create_collate_fn("datamodule_offset_collate_factory")
        is datamodule_offset_collate_factory
    )

    hld.DATASET_REGISTRY.register(RangeDataset)
    dataset = hld.create_dataset("RangeDataset", 5)
    assert isinstance(dataset, RangeDataset) and len(dataset) == 5
    with pytest.raises(KeyError, match="RangeDataset"):
        hld.create_dataset("Missing")


class TutorialDataModule(hld.DataModule):
    """The data module of seed 000, on an in-memory dataset."""

    def setup(self) -> None:
        params = hld.DataLoaderParams()
        params.batch_size = 4
        params.shuffle = True
        params.num_workers = 2
        params.drop_last = True
        self._train_dataset = self._create_dataset(RangeDataset(10), params)

        params.drop_last = False
        params.shuffle = False
        self._valid_dataset = self._create_dataset(RangeDataset(6), params)


def test_datamodule_tutorial_usage() -> None:
    module = TutorialDataModule()
    module.prepare_data()
    module.setup()
    assert isinstance(module.train_dataset, RangeDataset)
    assert module.test_dataset is None
    assert module.test_dataloader() is None
    assert not module.is_distributed

    train = module.train_dataloader()
    assert train is not None
    train_loader, train_sampler = train
    assert isinstance(train_sampler, ResumableRandomSampler)
    assert train_loader.drop_last and train_loader.num_workers == 2
    valid = module.valid_dataloader()
    assert valid is not None
    valid_loader, valid_sampler = valid
    # Mutating params after _create_dataset does not leak into the stored copy.
    assert isinstance(valid_sampler, ResumableSequentialSampler)
    assert not valid_loader.drop_last
    assert batches(valid_loader) == [[0, 1, 2, 3], [4, 5]]
    module.teardown()


def test_datamodule_contract_and_errors() -> None:
    with pytest.raises(TypeError, match="abstract"):
        hld.DataModule()  # type: ignore[abstract]

    class Module(hld.DataModule):
        def setup(self) -> None:
            pass

    module = Module()
    assert module.train_dataloader() is None
    with pytest.raises(AssertionError):
        _ = module.trainer
    sentinel: Any = object()
    module.trainer = sentinel
    assert module.trainer is sentinel

    params = hld.DataLoaderParams(batch_size=2)
    stored = module._create_dataset(RangeDataset(3), params)
    params.batch_size = 8
    assert stored.params.batch_size == 2
    assert stored.params is not params
    assert dataclasses.asdict(stored.params) != dataclasses.asdict(params)

    with pytest.raises(TypeError, match="params to be a DataLoaderParams or a dict"):
        module._create_dataset(RangeDataset(3), [("batch_size", 2)])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch_size to be >= 1"):
        module._create_dataset(RangeDataset(3), {"batch_size": 0})
    with pytest.raises(ValueError, match="unknown DataLoaderParams keys"):
        module._create_dataset(RangeDataset(3), {"batchsize": 2})
    with pytest.raises(ValueError, match="dataset to be non-empty"):
        module._create_dataset(RangeDataset(0), params)
