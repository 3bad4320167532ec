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

Given an :py:class:`Interruption` (``verify-resume``'s plan for one process), the plug-in also
stops its own process at the planned step, whatever the machine's load: once it has
fingerprinted the planned step it starts a timer thread that, a random fraction of a step
later (the fraction is the plan's, the step's length the one this process just measured),
notes the signal in the file and sends it: SIGKILL to the process group (the process and its
data-loader workers), SIGTERM to the process, whose preemption handling then stops the run.
The signal so lands at a random moment of what follows the step: its validation or
checkpoint save, or the next step. Should the next step end before the timer fires, the
signal is sent right there, so it is never later than the end of the step after the planned
one (and always while the run trains, its signal handlers installed).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from typing import IO, TYPE_CHECKING, Any

import torch

from helios.plugins import Plugin

if TYPE_CHECKING:
    from helios.core.placement import RunTrainer
    from helios.model import Model
    from helios.trainer import TrainingState

PLUGIN_ID = "verify_resume_fingerprint"

_SWITCH_INTERVAL = 1e-4
"""The GIL switch interval (seconds) while an interruption's timer runs."""

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


@dataclasses.dataclass(frozen=True)
class Interruption:
    """A signal a training process sends itself: one interruption of ``verify-resume``.

    Written on the command line as ``SIGNAL:STEP:FRACTION`` (``SIGKILL:7:0.25``).

    Attributes:
        signal: SIGKILL or SIGTERM.
        after_step: the step (batch) after which the signal is sent.
        fraction: when, in ``[0, 1)``: the fraction of a step's length to wait after the
            step ends.
    """

    signal: signal.Signals
    after_step: int
    fraction: float

    def __post_init__(self) -> None:
        if self.signal not in (signal.SIGKILL, signal.SIGTERM):
            raise ValueError(f"signal must be SIGKILL or SIGTERM, got {self.signal.name}")
        if self.after_step < 0:
            raise ValueError(f"after_step must be >= 0, got {self.after_step}")
        if not 0.0 <= self.fraction <= 1.0:
            raise ValueError(f"fraction must be in [0, 1], got {self.fraction}")

    @classmethod
    def parse(cls, text: str) -> Interruption:
        """Read ``SIGNAL:STEP:FRACTION``.

        Raises:
            ValueError: if ``text`` is not of that form.
        """
        parts = text.split(":")
        if len(parts) != 3 or parts[0] not in ("SIGKILL", "SIGTERM"):
            raise ValueError(f"expected SIGKILL|SIGTERM:STEP:FRACTION, got {text!r}")
        return cls(signal.Signals[parts[0]], int(parts[1]), float(parts[2]))

    def __str__(self) -> str:
        return f"{self.signal.name}:{self.after_step}:{self.fraction!r}"


class FingerprintPlugin(Plugin):
    """Writes a fingerprint of every training step to a file (one JSON line per batch).

    Args:
        path: the file (appended to; each process of a resumed run adds its lines).
        interruption: a signal to send this process during the run (``verify-resume``),
            noted in the file as ``{"event": "signal", "signal": ..., "after_step": ...}``.
    """

    def __init__(self, path: pathlib.Path, interruption: Interruption | None = None) -> None:
        super().__init__(PLUGIN_ID)
        self._path = pathlib.Path(path)
        self._file: IO[str] | None = None
        self._interruption = interruption
        # The file is written by the training thread and by the interruption's timer (both
        # made in setup: a plug-in is pickled into the processes of a spawned run).
        self._lock: threading.Lock | None = None
        self._timer: threading.Timer | None = None
        self._sent = False
        self._last_step = 0
        self._last_time = 0.0
        self._switch_interval: float | None = None

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
            self._lock = threading.Lock()
            self._file = self._path.open("a", encoding="utf-8")
            self._write({"event": "start", "pid": os.getpid()})
            self._last_time = time.monotonic()

    def record(self, model: Model, state: TrainingState) -> None:
        """Append the fingerprint of the step that just ended."""
        if self._file is None:
            return
        assert self._lock is not None
        losses = {str(k): _loss_value(v) for k, v in model._loss_items.items() if v is not None}
        entry = {
            "step": state.global_iteration,
            "epoch": state.global_epoch,
            "iteration": state.current_iteration,
            "losses": losses,
            "tensors": {name: checksum(t) for name, t in tensors(model.state_dict())},
        }
        with self._lock:
            self._write_unlocked(entry)
            now = time.monotonic()
            step_seconds = now - self._last_time
            self._last_step, self._last_time = state.global_iteration, now
        if self._interruption is not None:
            self._interrupt(self._interruption, step_seconds)

    def _interrupt(self, plan: Interruption, step_seconds: float) -> None:
        """Arm the timer at the planned step; at the next step, send the signal if not sent."""
        if self._sent or self._last_step < plan.after_step:
            return
        if self._timer is None:
            # The timer thread needs the GIL to send the signal; with the default switch
            # interval (5 ms) a short step would mostly end first.
            self._switch_interval = sys.getswitchinterval()
            sys.setswitchinterval(_SWITCH_INTERVAL)
            self._timer = threading.Timer(plan.fraction * step_seconds, self._send)
            self._timer.daemon = True
            self._timer.start()
        else:  # the next step ended before the timer fired (a short step, a busy machine)
            self._timer.cancel()
            self._send()

    def _send(self) -> None:
        """Note the signal in the file, then send it (from the timer or the training thread)."""
        plan = self._interruption
        assert plan is not None and self._lock is not None
        with self._lock:
            if self._sent or self._file is None:
                return
            self._sent = True
            entry = {
                "event": "signal",
                "signal": plan.signal.name,
                "after_step": self._last_step,
                "seconds_after_step": round(time.monotonic() - self._last_time, 6),
            }
            self._write_unlocked(entry)
            if plan.signal == signal.SIGKILL and os.getpgrp() == os.getpid():
                os.killpg(os.getpid(), signal.SIGKILL)  # data-loader workers included
            else:
                os.kill(os.getpid(), plan.signal)
            self._restore_switch_interval()

    def _restore_switch_interval(self) -> None:
        if self._switch_interval is not None:
            sys.setswitchinterval(self._switch_interval)
            self._switch_interval = None

    def _write(self, entry: dict[str, Any]) -> None:
        assert self._lock is not None
        with self._lock:
            self._write_unlocked(entry)

    def _write_unlocked(self, entry: dict[str, Any]) -> None:
        assert self._file is not None
        self._file.write(json.dumps(entry) + "\n")
        self._file.flush()

    def on_training_end(self) -> None:
        """Close the file (a signal not sent by now is not sent)."""
        if self._timer is not None:
            self._timer.cancel()
            self._restore_switch_interval()
        if self._file is not None:
            self._write({"event": "end"})
            assert self._lock is not None
            with self._lock:
                self._file.close()
                self._file = None

    def state_dict(self) -> dict[str, Any]:
        """Nothing to save: the fingerprint is a function of the run's state."""
        return {}


__all__ = ["PLUGIN_ID", "FingerprintPlugin", "Interruption", "checksum", "tensors"]
