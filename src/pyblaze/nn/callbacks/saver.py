"""Save the model after every epoch."""

from __future__ import annotations

import os
import pathlib
import tempfile
from typing import ClassVar

import torch
from torch import nn

from pyblaze.nn.callbacks.base import TrainingCallback
from pyblaze.nn.config import Configurable
from pyblaze.nn.history import Evaluation


class ModelSaverCallback(TrainingCallback):
    """Save the model at the end of every epoch.

    The files are ``<directory>/<file_template>`` formatted with the 0-based epoch index:
    ``model_epoch-0.pt``, ``model_epoch-1.pt``, ... A :py:class:`~pyblaze.nn.Configurable`
    model is saved with its ``save`` method (``.json`` config plus ``.pt`` weights);
    any other model has its state dict (on the CPU) written to the ``.pt`` file. Missing
    folders are created and each weights file is replaced atomically.

    Args:
        directory: the folder of the files.
        file_template: the file name without extension, with a ``{}`` for the epoch.

    Raises:
        ValueError: if ``file_template`` has no ``{}`` placeholder.
    """

    rank_zero_only: ClassVar[bool] = True

    def __init__(
        self, directory: str | os.PathLike[str], file_template: str = "model_epoch-{}"
    ) -> None:
        if "{" not in file_template:
            raise ValueError(
                "ModelSaverCallback: file_template needs a '{}' placeholder for the epoch, "
                f"but received {file_template!r}"
            )
        self.directory = pathlib.Path(directory)
        self.file_template = file_template
        self._model: nn.Module | None = None
        self._epoch = 0

    def before_training(self, model: nn.Module, num_epochs: int) -> None:
        """Remember the model."""
        self._model = model

    def before_epoch(self, current: int, num_iterations: int) -> None:
        """Remember the index of the epoch."""
        self._epoch = current

    def after_epoch(self, metrics: Evaluation) -> None:
        """Save the model."""
        if self._model is None:
            return
        path = self.directory / self.file_template.format(self._epoch)
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(self._model, Configurable):
            self._model.save(path)
            return
        state = {k: v.detach().cpu() for k, v in self._model.state_dict().items()}
        target = path.with_name(path.name + ".pt")
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        try:
            with os.fdopen(fd, "wb") as handle:
                torch.save(state, handle)
            os.replace(tmp, target)
        except BaseException:
            pathlib.Path(tmp).unlink(missing_ok=True)
            raise

    def after_training(self) -> None:
        """Forget the model."""
        self._model = None


__all__ = ["ModelSaverCallback"]
