import subprocess
import sys

import pytest
import torch
from torch.utils.data import DataLoader, Subset, TensorDataset

import pyblaze.nn  # noqa: F401  (installs Dataset.loader / Dataset.random_split)


def test_random_split_sizes_and_disjointness() -> None:
    dataset = TensorDataset(torch.arange(20))
    parts = dataset.random_split(0.33, 0.33, 0.34)
    assert [len(p) for p in parts] == [7, 7, 6]
    assert all(isinstance(p, Subset) for p in parts)
    indices = [i for p in parts for i in p.indices]
    assert sorted(indices) == list(range(20))


def test_random_split_never_overflows_and_keeps_every_item() -> None:
    dataset = TensorDataset(torch.arange(5))
    parts = dataset.random_split(0.3, 0.3, 0.3, 0.1)
    assert sum(len(p) for p in parts) == 5
    assert sorted(i for p in parts for i in p.indices) == list(range(5))


def test_random_split_is_reproducible() -> None:
    dataset = TensorDataset(torch.arange(50))
    a = dataset.random_split(0.8, 0.2, seed=3)
    b = dataset.random_split(0.8, 0.2, seed=3)
    assert a[0].indices == b[0].indices
    torch.manual_seed(0)
    c = dataset.random_split(0.5, 0.5)
    torch.manual_seed(0)
    d = dataset.random_split(0.5, 0.5)
    assert c[0].indices == d[0].indices


def test_random_split_rejects_bad_fractions() -> None:
    dataset = TensorDataset(torch.arange(10))
    with pytest.raises(ValueError, match=r"must sum to 1, but \(0\.8, 0\.3\) sum to 1\.1"):
        dataset.random_split(0.8, 0.3)
    with pytest.raises(ValueError, match="at least one fraction"):
        dataset.random_split()
    with pytest.raises(ValueError, match=r"in \[0, 1\], but received -0\.5"):
        dataset.random_split(1.5, -0.5)
    with pytest.raises(TypeError, match=r"must be numbers, but received '0.5'"):
        dataset.random_split("0.5", 0.5)


def test_loader_passes_arguments_and_dataset_collate_fn() -> None:
    dataset = TensorDataset(torch.arange(10))
    loader = dataset.loader(batch_size=4, shuffle=False)
    assert isinstance(loader, DataLoader)
    assert [len(b[0]) for b in loader] == [4, 4, 2]

    class WithCollate(TensorDataset):
        @staticmethod
        def collate_fn(items: list) -> str:
            return f"{len(items)} items"

    custom = WithCollate(torch.arange(6)).loader(batch_size=3, collate_fn=lambda x: x)
    assert list(custom) == ["3 items", "3 items"]


@pytest.mark.slow
def test_import_is_light() -> None:
    code = (
        "import sys, pyblaze.nn, pyblaze.nn.functional\n"
        "heavy = {'tensorboard', 'sklearn', 'matplotlib', 'torchvision', 'optuna'}\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & heavy))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
