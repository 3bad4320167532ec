"""The non-finite guard: a NaN or infinite loss or model state stops training before a save.

What is checked, and when (``Trainer(nonfinite_guard=True)``, the default):

* The losses of every batch (the model's ``loss_items``, its ``_loss_items`` table, after
  ``on_training_batch_end``). A loss on the CPU is checked at once: reading a CPU scalar
  costs no synchronisation. A loss on another device (a GPU) is not read back every step:
  the guard keeps a detached reference to it (no kernel for a scalar loss; every 256 steps
  the references are stacked into one tensor), and the losses are read, with one
  synchronisation, at the next *boundary*: a step where
  ``should_log`` is set (the print frequency: a logging step reads the losses anyway),
  before a validation cycle, before every checkpoint and at the end of training.
* The model's state (every floating-point tensor of ``Model.state_dict()``, optimizer
  state included) right before every checkpoint, so a NaN never reaches a file. Python
  numbers in the state (``best_loss = inf``) are not checked, tensors are: a buffer that
  holds ``-inf`` on purpose needs ``nonfinite_guard=False``.

A failed check raises :py:class:`NonFiniteError`, naming the iteration, the epoch, the loss
key (or state entry) and the value; ``fit`` logs it and returns False (list the type in
``Trainer.train_exceptions`` to have it raised). The newest checkpoint written before stays
the resume point. In a distributed run the ranks agree at each boundary, so they stop
together.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

from helios.core.distributed import agree_any
from helios.model.sharding import local_shard

if TYPE_CHECKING:
    from helios.model import Model

    from .state import TrainingState


# Device losses kept as references before they are stacked into one tensor.
_CHUNK = 256


class NonFiniteError(RuntimeError):
    """Training produced a NaN or infinite loss or model state.

    Args:
        message: the message.
        iteration: the global iteration (batch count) where it was found, if known.
    """

    def __init__(self, message: str, iteration: int | None = None) -> None:
        super().__init__(message)
        self.iteration = iteration


def _tensors(obj: Any, prefix: str) -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(obj, torch.Tensor):
        # A DTensor is checked by its local shard: no collective, each rank its own part.
        yield prefix, local_shard(obj)
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from _tensors(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(obj, list | tuple):
        for index, value in enumerate(obj):
            yield from _tensors(value, f"{prefix}[{index}]")


def _first_non_finite(tensor: torch.Tensor) -> float:
    values = tensor.detach().reshape(-1)
    bad = values[~torch.isfinite(values)]
    return complex(bad[0].item()).real if bad.is_complex() else float(bad[0].item())


class NonFiniteGuard:
    """Watches the losses and the model state of one run (see the module docstring).

    Args:
        model: the model.
        collective_device: the device for agreeing across ranks (``None``: one process).
        check_losses: watch the losses; off when a grad scaler (``fp16-mixed``) is in use,
            whose job is to skip the steps whose loss or gradients overflow (the model
            state is still checked before every save).
    """

    # A CPU loss is read at once (no synchronisation); False records it like a GPU loss.
    read_cpu_losses_at_once = True

    def __init__(
        self, model: Model, collective_device: torch.device | None, check_losses: bool = True
    ) -> None:
        self._model = model
        self._check_losses = check_losses
        self._collective_device = collective_device
        # Losses not read yet: (iteration, key, detached 0-dim value), and stacked chunks.
        self._pending: list[tuple[int, str, torch.Tensor]] = []
        self._chunks: list[tuple[list[tuple[int, str]], torch.Tensor]] = []
        self._found: NonFiniteError | None = None

    def after_step(self, state: TrainingState, should_log: bool) -> None:
        """Check (CPU) or record (other devices) the losses of the step just made.

        Args:
            state: the training state.
            should_log: whether this step is a logging step (a boundary).

        Raises:
            NonFiniteError: for a non-finite CPU loss, or at a boundary.
        """
        if not self._check_losses:
            return
        for key, loss in self._model.loss_items.items():
            if isinstance(loss, torch.Tensor):
                if loss.is_cpu and self.read_cpu_losses_at_once:  # is_cpu: cheaper than .device
                    if loss.numel() == 1:
                        value = loss.item()
                        finite = math.isfinite(abs(value))  # abs: complex or int too
                    else:
                        finite = bool(torch.isfinite(loss).all())
                        value = 0.0 if finite else _first_non_finite(loss)
                    if not finite:
                        self._fail_loss(key, value, state.global_iteration, state.global_epoch)
                else:
                    self._record(key, loss, state.global_iteration)
            elif isinstance(loss, int | float) and not math.isfinite(loss):
                self._fail_loss(key, float(loss), state.global_iteration, state.global_epoch)
        if should_log and (self._pending or self._chunks):
            self.check(state)

    def _fail_loss(self, key: str, value: float, iteration: int, epoch: int | None) -> None:
        where = f"global iteration {iteration}" + (f" (epoch {epoch})" if epoch else "")
        raise NonFiniteError(
            f"non-finite loss {key!r} = {value} at {where}; training stopped and no "
            "checkpoint was written from this state: the newest checkpoint saved before "
            "stays the resume point",
            iteration,
        )

    def _record(self, key: str, loss: torch.Tensor, iteration: int) -> None:
        # Per step: keep a detached reference (no kernel for a scalar loss). Every
        # _CHUNK steps the references are stacked into one tensor per device and dtype.
        value = loss.detach()
        if value.numel() != 1:
            value = value.abs().amax()  # nan or inf if any element is; never overflows
        self._pending.append((iteration, key, value.reshape(())))
        if len(self._pending) >= _CHUNK:
            self._stack_pending()

    def _stack_pending(self) -> None:
        groups: dict[tuple[torch.device, torch.dtype], list[tuple[int, str, torch.Tensor]]] = {}
        for entry in self._pending:
            groups.setdefault((entry[2].device, entry[2].dtype), []).append(entry)
        for entries in groups.values():
            where = [(iteration, key) for iteration, key, _ in entries]
            self._chunks.append((where, torch.stack([value for _, _, value in entries])))
        self._pending = []

    def check(self, state: TrainingState) -> None:
        """Read the recorded losses (one synchronisation) and agree across ranks.

        Args:
            state: the training state.

        Raises:
            NonFiniteError: if a non-finite loss was recorded on any rank.
        """
        error = self._found
        if self._pending:
            self._stack_pending()
        chunks, self._chunks = self._chunks, []
        first: tuple[int, str, float] | None = None
        if error is None and chunks:
            flags = [torch.isfinite(values).all() for _, values in chunks]
            finite = [bool(flag) for flag in flags]
            for (where, values), ok in zip(chunks, finite, strict=True):
                if ok:
                    continue
                index = int(torch.logical_not(torch.isfinite(values)).int().argmax())
                iteration, key = where[index]
                if first is None or iteration < first[0]:
                    first = (iteration, key, float(values[index]))
        if first is not None:
            try:
                self._fail_loss(first[1], first[2], first[0], None)
            except NonFiniteError as found:
                error = found
        self._agree_and_raise(error, state)

    def model_state_error(
        self, contents: dict[str, Any], state: TrainingState
    ) -> NonFiniteError | None:
        """Check every floating-point tensor of the model's entry of a gathered checkpoint.

        The checkpoint calls this on the saving rank before writing anything.

        Args:
            contents: the gathered checkpoint contents (its ``"model"`` entry is checked).
            state: the training state.

        Returns:
            The error naming the first non-finite entry and a value of it, or ``None``.
        """
        tensors = [
            (name, t)
            for name, t in _tensors(contents.get("model"), "")
            if t.is_floating_point() or t.is_complex()
        ]
        if not tensors:
            return None
        # One reduction per tensor and one read per device; the exact pass only on doubt
        # (a sum can overflow to inf for finite values).
        sums = [torch.isfinite(t.detach().sum()) for _, t in tensors]
        by_device: dict[torch.device, list[torch.Tensor]] = {}
        for flag in sums:
            by_device.setdefault(flag.device, []).append(flag)
        if all(bool(torch.stack(flags).all()) for flags in by_device.values()):
            return None
        for (name, tensor), flag in zip(tensors, sums, strict=True):
            if bool(flag) or bool(torch.isfinite(tensor).all()):
                continue
            return NonFiniteError(
                f"non-finite model state at global iteration {state.global_iteration} "
                f"(epoch {state.global_epoch}): state_dict entry {name!r} holds "
                f"{_first_non_finite(tensor)}; the checkpoint was not written: the newest "
                "checkpoint saved before stays the resume point",
                state.global_iteration,
            )
        return None

    def _agree_and_raise(self, error: NonFiniteError | None, state: TrainingState) -> None:
        device = self._collective_device
        if device is not None and agree_any(error is not None, device) and error is None:
            error = NonFiniteError(
                "another rank found a non-finite loss or model state by global "
                f"iteration {state.global_iteration}; training stopped",
                state.global_iteration,
            )
        if error is not None:
            self._found = error
            raise error


__all__ = ["NonFiniteError", "NonFiniteGuard"]
