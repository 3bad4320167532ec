"""Save the model after every epoch, keeping the last and the best files if asked."""

from __future__ import annotations

import os
import pathlib
from typing import Any, ClassVar

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
    folders are created and every file is written atomically (a temporary file, synced,
    renamed over the final name), so a crash never leaves a truncated file.

    Retention follows helios' checkpoint retention
    (:py:mod:`helios.trainer.checkpoint.retention`, the rule of
    ``Trainer(chkpt_keep_last=..., chkpt_keep_best=...)``): with ``keep_last`` or
    ``keep_best`` only the newest file, the newest ``keep_last`` ones and the ``keep_best``
    ones with the best ``best_metric`` (a metric of the epoch's evaluation) are kept; an
    older file is deleted only after the new one is on disk. Files written by earlier
    ``fit`` calls are never deleted.

    Args:
        directory: the folder of the files.
        file_template: the file name without extension, with a ``{}`` for the epoch.
        keep_last: keep the newest this many files (``None``: see above).
        keep_best: also keep this many files with the best ``best_metric``.
        best_metric: the metric of the epoch's evaluation that ranks the files; with it,
            :py:attr:`best_path` names the best one.
        best_mode: ``"max"`` (higher is better) or ``"min"``.

    Raises:
        ValueError: if ``file_template`` has no ``{}`` placeholder, or for invalid
            retention arguments.
        TypeError: for retention arguments of the wrong type.
    """

    rank_zero_only: ClassVar[bool] = True

    def __init__(
        self,
        directory: str | os.PathLike[str],
        file_template: str = "model_epoch-{}",
        keep_last: int | None = None,
        keep_best: int | None = None,
        best_metric: str | None = None,
        best_mode: str = "max",
    ) -> None:
        from helios.trainer.arguments import check_retention

        if "{" not in file_template:
            raise ValueError(
                "ModelSaverCallback: file_template needs a '{}' placeholder for the epoch, "
                f"but received {file_template!r}"
            )
        self.directory = pathlib.Path(directory)
        self.file_template = file_template
        self.policy = check_retention(keep_last, keep_best, best_metric, best_mode, prefix="")
        self._model: nn.Module | None = None
        self._epoch = 0
        self._saved: list[Any] = []

    @property
    def best_path(self) -> pathlib.Path | None:
        """The path (without extension) of the best file of this fit, if ranked."""
        from helios.trainer.checkpoint.retention import best_of

        name = best_of(self._saved, self.policy)
        return None if name is None else self.directory / name

    def before_training(self, model: nn.Module, num_epochs: int) -> None:
        """Remember the model."""
        self._model = model
        self._saved = []

    def before_epoch(self, current: int, num_iterations: int | None) -> None:
        """Remember the index of the epoch."""
        self._epoch = current

    def after_epoch(self, metrics: Evaluation) -> None:
        """Save the model, then delete the files the retention no longer keeps."""
        from helios.trainer.checkpoint.io import save_atomically
        from helios.trainer.checkpoint.retention import (
            RetainedCheckpoint,
            metric_value,
            select_kept,
        )

        if self._model is None:
            return
        path = self.directory / self.file_template.format(self._epoch)
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(self._model, Configurable):
            self._model.save(path)
        else:
            state = {k: v.detach().cpu() for k, v in self._model.state_dict().items()}
            save_atomically(state, path.with_name(path.name + ".pt"))
        metric = None
        if self.policy.best_metric is not None:
            names = list(metrics.keys)
            values = {n: metrics[n] for n in names}
            metric = metric_value(values, self.policy.best_metric)
        entry = RetainedCheckpoint(path.name, self._epoch, self._epoch, metric)
        candidates = [e for e in self._saved if e.name != entry.name] + [entry]
        self._saved = select_kept(candidates, self.policy)
        kept = {e.name for e in self._saved}
        for dropped in candidates:
            if dropped.name not in kept:
                for suffix in (".pt", ".json"):
                    (self.directory / (dropped.name + suffix)).unlink(missing_ok=True)

    def after_training(self) -> None:
        """Forget the model."""
        self._model = None

    def state_dict(self) -> dict[str, Any]:
        """Return the epoch and the files kept so far (part of the run's checkpoints).

        Returns:
            The state.
        """
        return {"epoch": self._epoch, "saved": [entry.to_dict() for entry in self._saved]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :py:meth:`state_dict` returned.

        Args:
            state_dict: the state.
        """
        from helios.trainer.checkpoint.retention import RetainedCheckpoint

        self._epoch = int(state_dict["epoch"])
        self._saved = [RetainedCheckpoint.from_dict(entry) for entry in state_dict["saved"]]


__all__ = ["ModelSaverCallback"]
