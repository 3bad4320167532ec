"""The digits classifier's parts, registered for a run from a config file.

``examples/digits_config.yaml`` names this module in its ``imports``; then::

    helios fit examples/digits_config.yaml

trains the same run as ``python examples/digits_classifier.py --epochs 2``, bit for bit,
with the network, optimizer, loss and batch size read from the config. The model is the
tutorial's :py:class:`ClassifierModel` (its steps, its logging, its checkpoint state) with
its parts built from the specs the config gives; the data module takes its batch size and
split as arguments.
"""

from __future__ import annotations

import pathlib
import sys

import helios.data as hld
import helios.model as hlm
import helios.nn as hln
from helios.cli import LossSpec, NetworkSpec, OptimizerSpec

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _digits
import digits_classifier

hln.NETWORK_REGISTRY.register(digits_classifier.Net)


@hlm.MODEL_REGISTRY.register
class DigitsClassifier(digits_classifier.ClassifierModel):
    """The tutorial's classifier with its network, optimizer and loss named by the config.

    Args:
        network: the network (``Net``).
        optimizer: the optimizer, built on the network's parameters.
        loss: the loss.
        epochs: the number of epochs, logged with the hyper-parameters.
        clip_norm: clip the total norm of the gradients to this (``None``: no clipping).
    """

    def __init__(
        self,
        network: NetworkSpec,
        optimizer: OptimizerSpec,
        loss: LossSpec,
        epochs: int = digits_classifier.EPOCHS,
        clip_norm: float | None = None,
    ) -> None:
        super().__init__(epochs, clip_norm)
        self._network, self._optimizer_spec, self._loss = network, optimizer, loss

    def setup(self, fast_init: bool = False) -> None:
        """Build the network, the loss and the optimizer, in the tutorial's order."""
        self._net = self._network.build().to(self.device)
        self._criterion = self._loss.build().to(self.device)
        self._optimizer = self._optimizer_spec.build(self._net.parameters())


class DigitsData(hld.DataModule):
    """The digits, split into training and validation sets with a fixed seed.

    Args:
        batch_size: the training and validation batch size.
        valid_fraction: the share of the images kept for validation.
        split_seed: the seed of the split.
    """

    def __init__(self, batch_size: int = 16, valid_fraction: float = 0.2, split_seed: int = 0):
        super().__init__()
        self._batch_size = batch_size
        self._valid_fraction = valid_fraction
        self._split_seed = split_seed

    def setup(self) -> None:
        """Create the training and validation datasets."""
        train, valid = _digits.digits_splits(self._valid_fraction, self._split_seed)
        params = hld.DataLoaderParams(batch_size=self._batch_size, shuffle=True, drop_last=True)
        self._train_dataset = self._create_dataset(train, params)
        params = hld.DataLoaderParams(batch_size=self._batch_size)
        self._valid_dataset = self._create_dataset(valid, params)
