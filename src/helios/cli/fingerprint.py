"""A cheap per-step fingerprint of a training run, for ``helios verify-resume``.

After every training batch the :py:class:`FingerprintPlugin` appends one JSON line to a
file: the batch's position, each loss of the batch (the exact float, as hex) and, for every
tensor of the model's state (weights and optimizer state), two integer checksums of its
bits. Two runs that are bit-identical have identical lines; the first line that differs
names the step where they diverge and the first tensor or loss that differs, without saving
every weight at every step.

The plug-in observes the batches through the model's ``on_training_batch_end`` (it wraps the
hook of the model instance it is configured with), and changes nothing: it draws no random
number and its own checkpoint state is empty.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Iterator, Mapping
from typing import IO, TYPE_CHECKING, Any

import torch

from helios.plugins import Plugin

if TYPE_CHECKING:
    from helios.core.placement import RunTrainer
    from helios.model import Model
    from helios.trainer import TrainingState

PLUGIN_ID = "verify_resume_fingerprint"

_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def checksum(tensor: torch.Tensor) -> str:
    """Return a checksum of a tensor's bits (two wrapping sums), its shape and dtype.

    Any change of one element changes it; so does (almost surely) a permutation.
    """
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    if flat.is_complex():
        flat = torch.view_as_real(flat).reshape(-1)
    if flat.dtype == torch.bool:
        bits = flat.to(torch.int64)
    elif flat.is_floating_point() or flat.dtype.itemsize in _BITS:
        bits = flat.view(_BITS[flat.dtype.itemsize]).to(torch.int64)
    else:  # pragma: no cover - every dtype torch has is 1, 2, 4 or 8 bytes
        bits = flat.to(torch.int64)
    weights = torch.arange(bits.numel(), dtype=torch.int64) % 65521 + 1
    shape = "x".join(str(s) for s in tensor.shape)
    return f"{int(bits.sum())}:{int((bits * weights).sum())}:{shape}:{str(tensor.dtype)[6:]}"


def tensors(value: Any, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of a nested state, by dotted path."""
    if isinstance(value, torch.Tensor):
        yield prefix, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from tensors(item, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from tensors(item, f"{prefix}.{index}" if prefix else str(index))


def _loss_value(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        if value.numel() == 1:
            return float(value.detach().to("cpu").double().item()).hex()
        return checksum(value)
    if isinstance(value, int | float):
        return float(value).hex()
    return repr(value)


class FingerprintPlugin(Plugin):
    """Writes a fingerprint of every training step to a file (one JSON line per batch).

    Args:
        path: the file (appended to; each process of a resumed run adds its lines).
    """

    def __init__(self, path: pathlib.Path) -> None:
        super().__init__(PLUGIN_ID)
        self._path = pathlib.Path(path)
        self._file: IO[str] | None = None

    def configure_trainer(self, trainer: RunTrainer) -> None:
        """Register the plug-in."""
        self._register_in_trainer(trainer)

    def configure_model(self, model: Model) -> None:
        """Observe the model's batches: wrap its ``on_training_batch_end``."""
        hook = model.on_training_batch_end

        def observed(state: TrainingState, should_log: bool = False) -> None:
            hook(state, should_log=should_log)
            self.record(model, state)

        model.on_training_batch_end = observed  # type: ignore[method-assign]

    def setup(self) -> None:
        """Open the file (rank 0 only writes)."""
        if self.rank == 0 and self._file is None:
            self._file = self._path.open("a", encoding="utf-8")
            self._write({"event": "start", "pid": os.getpid()})

    def record(self, model: Model, state: TrainingState) -> None:
        """Append the fingerprint of the step that just ended."""
        if self._file is None:
            return
        losses = {str(k): _loss_value(v) for k, v in model._loss_items.items() if v is not None}
        self._write(
            {
                "step": state.global_iteration,
                "epoch": state.global_epoch,
                "iteration": state.current_iteration,
                "losses": losses,
                "tensors": {name: checksum(t) for name, t in tensors(model.state_dict())},
            }
        )

    def _write(self, entry: dict[str, Any]) -> None:
        assert self._file is not None
        self._file.write(json.dumps(entry) + "\n")
        self._file.flush()

    def on_training_end(self) -> None:
        """Close the file."""
        if self._file is not None:
            self._write({"event": "end"})
            self._file.close()
            self._file = None

    def state_dict(self) -> dict[str, Any]:
        """Nothing to save: the fingerprint is a function of the run's state."""
        return {}


__all__ = ["PLUGIN_ID", "FingerprintPlugin", "checksum", "tensors"]
