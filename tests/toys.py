"""Small models and data shared by the tests and by the job scripts they start.

Importable as ``toys``: pytest puts ``tests/`` on ``sys.path`` (``pythonpath`` in
pyproject.toml, which spawned processes inherit), and a job script run on its own puts it
there before importing this module.

Every toy is deterministic given its arguments: the data come from seeded generators, and a
network draws its initial weights from torch's global generator in the order it creates its
layers, so tests that compare two runs bit for bit seed torch and build the same toy with the
same arguments on both sides. A test whose toy differs on purpose (it records, crashes,
sleeps or draws random numbers in its step) keeps that toy, often as a subclass of one here.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

import helios.data as hld
import helios.model as hlm
import helios.trainer as hlt

# -- helios: data ----------------------------------------------------------------------------


def blobs(num_samples: int, seed: int = 0) -> TensorDataset:
    """``num_samples`` points ``(x, y)`` with 3 features; ``y`` is 1 where they sum above 0."""
    x = torch.randn(num_samples, 3, generator=torch.Generator().manual_seed(seed))
    return TensorDataset(x, (x.sum(dim=1) > 0).long())


class BlobsData(hld.DataModule):
    """:func:`blobs` for :class:`LinearClassifier`.

    Args:
        num_samples: points in the data set.
        batch_size: training batch size.
        shuffle: shuffle the training batches.
        eval_batch_size: batch size of validation and test splits (the training points);
            ``None``: no validation or test split.
    """

    def __init__(
        self,
        num_samples: int = 16,
        batch_size: int = 4,
        shuffle: bool = True,
        eval_batch_size: int | None = 8,
    ) -> None:
        super().__init__()
        self.num_samples, self.batch_size, self.shuffle = num_samples, batch_size, shuffle
        self.eval_batch_size = eval_batch_size
        self.prepared = False

    def prepare_data(self) -> None:
        self.prepared = True

    def setup(self) -> None:
        dataset = blobs(self.num_samples)
        params = hld.DataLoaderParams(batch_size=self.batch_size, shuffle=self.shuffle)
        self._train_dataset = self._create_dataset(dataset, params)
        if self.eval_batch_size is not None:
            params = hld.DataLoaderParams(batch_size=self.eval_batch_size)
            self._valid_dataset = self._create_dataset(dataset, params)
            self._test_dataset = self._create_dataset(dataset, params)


class IndexedSamples(Dataset):
    """Fixed regression samples ``(id, x, y)``: ``x`` has ``features`` values, ``y`` one."""

    def __init__(self, size: int, seed: int = 1234, features: int = 3) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.x = torch.randn(size, features, generator=generator)
        self.y = torch.randn(size, 1, generator=generator)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return torch.tensor(index), self.x[index], self.y[index]


class RegressionData(hld.DataModule):
    """Points ``(x, y)`` with 4 features (seed 0) and the same points for validation.

    Args:
        num_samples: points in the data set.
        target: ``"weights"``: ``y = x @ [1, -2, 0.5, 3]``; ``"sum"``: the sum of ``x``.
        batch_size: training batch size.
        valid_batch_size: validation batch size.
        shuffle: shuffle the training batches.
    """

    def __init__(
        self,
        num_samples: int = 32,
        target: Literal["weights", "sum"] = "weights",
        batch_size: int = 8,
        valid_batch_size: int = 16,
        shuffle: bool = True,
    ) -> None:
        super().__init__()
        self.num_samples, self.target, self.shuffle = num_samples, target, shuffle
        self.batch_size, self.valid_batch_size = batch_size, valid_batch_size

    def setup(self) -> None:
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(self.num_samples, 4, generator=generator)
        if self.target == "weights":
            y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
        else:
            y = x.sum(dim=1, keepdim=True)
        params = hld.DataLoaderParams(batch_size=self.batch_size, shuffle=self.shuffle)
        self._train_dataset = self._create_dataset(TensorDataset(x, y), params)
        params = hld.DataLoaderParams(batch_size=self.valid_batch_size)
        self._valid_dataset = self._create_dataset(TensorDataset(x, y), params)


# -- helios: models --------------------------------------------------------------------------


def regression_mlp() -> nn.Sequential:
    """3 inputs, a hidden layer of 8 with dropout, 1 output."""
    return nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, 1))


class LinearClassifier(hlm.Model):
    """``nn.Linear(3, 2)`` trained with SGD on cross-entropy, for :class:`BlobsData`.

    Its state is the network and the optimizer (the optimizer is skipped on ``fast_init``).
    """

    def __init__(self, save_name: str = "tiny", lr: float = 0.1) -> None:
        super().__init__(save_name)
        self.lr = lr

    def setup(self, fast_init: bool = False) -> None:
        self.net = nn.Linear(3, 2).to(self.device)
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=self.lr)

    def state_dict(self) -> dict[str, Any]:
        return {"net": self.net.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any], fast_init: bool = False) -> None:
        self.net.load_state_dict(state_dict["net"])
        if not fast_init:
            self.optimizer.load_state_dict(state_dict["optimizer"])

    def train_step(self, batch: Any, state: hlt.TrainingState) -> None:
        x, y = batch
        self.optimizer.zero_grad()
        loss = nn.functional.cross_entropy(self.net(x), y)
        loss.backward()
        self.optimizer.step()
        self._loss_items["loss"] = loss


class TunedRegressor(hlm.Model):
    """``nn.Linear(4, 1)`` trained with SGD on MSE, its learning rate asked of the Optuna trial.

    For :class:`RegressionData` under :class:`helios.plugins.optuna.OptunaPlugin` (taken
    from the trainer's plug-ins in ``setup`` as ``self.plugin``; the suggested rate is
    ``self.lr``). Its state is the network and the optimizer.
    """

    lr_range = (1e-3, 1e-1)
    lr_log = True

    def __init__(self, save_name: str) -> None:
        super().__init__(save_name)
        self.lr = 0.0

    def setup(self, fast_init: bool = False) -> None:
        from helios.plugins import optuna as hlpo

        plugin = self.trainer.plugins[hlpo.OptunaPlugin.plugin_id]
        assert isinstance(plugin, hlpo.OptunaPlugin)
        self.plugin = plugin
        low, high = self.lr_range
        self.lr = plugin.suggest("float", "lr", low=low, high=high, log=self.lr_log)
        self.net = nn.Linear(4, 1)
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=self.lr)

    def state_dict(self) -> dict[str, Any]:
        return {"net": self.net.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any], fast_init: bool = False) -> None:
        self.net.load_state_dict(state_dict["net"])
        self.optimizer.load_state_dict(state_dict["optimizer"])

    def train(self) -> None:
        self.net.train()

    def eval(self) -> None:
        self.net.eval()

    def train_step(self, batch: Any, state: hlt.TrainingState) -> None:
        x, y = batch
        self.optimizer.zero_grad()
        loss = nn.functional.mse_loss(self.net(x), y)
        loss.backward()
        self.optimizer.step()
        self._loss_items["loss"] = loss
