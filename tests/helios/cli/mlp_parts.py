"""Parts for the ``helios`` command's tests: a tiny MLP on the 8x8 digits (fast to train).

``LeakyCounter`` is deliberately not resumable: it keeps a step counter outside its
``state_dict``, which scales its loss, so a resumed run trains differently from the step
after the resume on.
"""

from __future__ import annotations

import importlib.util
import pathlib
import typing

import numpy as np
import torch
import torch.utils.data as tud

import helios.data as hld
import helios.model as hlm
import helios.nn as hln
import helios.trainer as hlt
from helios.cli import LossSpec, NetworkSpec, OptimizerSpec


@hln.NETWORK_REGISTRY.register
class TinyMLP(torch.nn.Sequential):
    def __init__(self, width: int = 16) -> None:
        super().__init__(torch.nn.Linear(64, width), torch.nn.ReLU(), torch.nn.Linear(width, 10))


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1797 digits (64 pixels 0..16, label), read from its data file.

    As ``sklearn.datasets.load_digits`` reads them, without importing scikit-learn (and
    SciPy): a second of start-up saved in every process the tests start.
    """
    spec = importlib.util.find_spec("sklearn")
    assert spec is not None and spec.origin is not None, "the tests need scikit-learn"
    data = np.loadtxt(
        pathlib.Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz", delimiter=","
    )
    return data[:, :-1], data[:, -1].astype(int)


class SmallDigits(hld.DataModule):
    def __init__(self, batch_size: int = 32) -> None:
        super().__init__()
        self._batch_size = batch_size

    def setup(self) -> None:
        pixels, labels = load_digits()
        data = tud.TensorDataset(
            torch.tensor(pixels, dtype=torch.float32) / 16.0, torch.tensor(labels)
        )
        params = hld.DataLoaderParams(batch_size=self._batch_size, shuffle=True)
        self._train_dataset = self._create_dataset(data, params)


@hlm.MODEL_REGISTRY.register
class MLPClassifier(hlm.Model):
    def __init__(self, network: NetworkSpec, optimizer: OptimizerSpec, loss: LossSpec) -> None:
        super().__init__("mlp")
        self._specs = (network, optimizer, loss)

    def setup(self, fast_init: bool = False) -> None:
        network, optimizer, loss = self._specs
        self._net = network.build().to(self.device)
        self._optimizer = optimizer.build(self._net.parameters())
        self._criterion = loss.build()

    def train_step(self, batch: typing.Any, state: hlt.TrainingState) -> None:
        x, y = batch
        self._optimizer.zero_grad()
        loss = self._criterion(self._net(x), y) * self.loss_scale()
        loss.backward()
        self._optimizer.step()
        self._loss_items["loss"] = loss

    def loss_scale(self) -> float:
        return 1.0

    def onnx_exports(self) -> dict[str, tuple[torch.nn.Module, torch.Tensor]]:
        return {"net": (self._net, torch.zeros(1, 64))}


@hlm.MODEL_REGISTRY.register
class NoExport(MLPClassifier):
    """Defines no ONNX export."""

    onnx_exports = None  # type: ignore[assignment]


@hlm.MODEL_REGISTRY.register
class LeakyCounter(MLPClassifier):
    """Counts its steps outside its state: not resumable."""

    def __init__(self, network: NetworkSpec, optimizer: OptimizerSpec, loss: LossSpec) -> None:
        super().__init__(network, optimizer, loss)
        self._steps = 0

    def loss_scale(self) -> float:
        self._steps += 1
        return 1.0 + 0.001 * self._steps


class Marker:
    """A type of the model's own in a checkpoint (not allowed for safe loading by default)."""

    def __init__(self, value: int = 0) -> None:
        self.value = value
