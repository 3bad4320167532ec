"""Stopping a run cleanly when a scheduler's signal asks it to (preemption).

SIGTERM (what schedulers and ``torchrun`` send first), SIGUSR1 (what SLURM sends ahead of
the end of a job with ``--signal``) and SIGINT (Ctrl-C) during ``fit`` only record the
request. The training loop polls it at every batch boundary that ends an iteration (with
gradient accumulation, gradients accumulated mid-iteration are not part of a checkpoint),
and between validation batches; there every rank agrees to stop, one checkpoint is written
at that exact position, and ``fit`` raises :py:class:`Preempted`, whose exit code is
``128 + signal number`` (143 for SIGTERM, 138 for SIGUSR1, 130 for SIGINT), the code a shell
reports for a process killed by that signal. A second Ctrl-C aborts at once with
``KeyboardInterrupt``.

Agreement across ranks costs one all-reduce of one integer every :py:data:`AGREE_EVERY`
polls, and one more after every iteration or epoch that validated or saved a checkpoint
(points where the ranks synchronise anyway). A rank that got the signal therefore stops at
most that many iterations later, together with the others; the work done until then is in
the checkpoint. In one process the poll is an attribute test.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

import torch

AGREE_EVERY = 16
"""Polls between two agreements across ranks in a distributed run."""

PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
"""The signals that stop a run at the next batch boundary."""


class Preempted(SystemExit):
    """Raised by ``fit`` after a signal stopped training and its checkpoint was written.

    It derives from :py:class:`SystemExit`, so a script that does not catch it ends with
    the exit code a scheduler expects from a process stopped by that signal.

    Args:
        signal_number: the signal that stopped the run.
        checkpoint: the checkpoint written (``None`` on ranks other than 0, or without
            ``chkpt_root``).
    """

    def __init__(self, signal_number: int, checkpoint: Any = None) -> None:
        super().__init__(128 + signal_number)
        self.signal_number = signal_number
        self.signal_name = signal.Signals(signal_number).name
        self.checkpoint = checkpoint


class ValidationInterruptedError(Exception):
    """Raised inside a validation cycle that a signal interrupted (handled by the loop)."""


class Preemption:
    """The stop request of one run: set by a signal handler, polled by the loop.

    It is also a checkpoint part: a checkpoint written during a validation cycle records
    that the unit in progress still has to end (validation, checkpoint, stop decisions),
    which the resumed run then does first.

    Args:
        collective_device: the device for agreeing across ranks, or ``None`` in one process.
    """

    def __init__(self, collective_device: torch.device | None = None) -> None:
        self.signal_number: int | None = None
        self.unit_end_pending = False
        self._collective_device = collective_device
        self._polls_to_agreement = AGREE_EVERY

    @contextlib.contextmanager
    def handling_signals(self) -> Iterator[None]:
        """Install the signal handlers for the duration of the block (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self._on_signal) for sig in PREEMPTION_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signal_number: int, frame: Any) -> None:
        if self.signal_number is not None and signal_number == signal.SIGINT:
            raise KeyboardInterrupt
        if self.signal_number is None:
            self.signal_number = signal_number
            name = signal.Signals(signal_number).name
            print(
                f"helios: received {name}; saving a checkpoint at the next batch boundary "
                "(press Ctrl-C again to abort at once)",
                file=sys.stderr,
                flush=True,
            )

    def poll(self) -> bool:
        """Return whether the run must stop here (the same answer on every rank)."""
        if self._collective_device is None:
            return self.signal_number is not None
        self._polls_to_agreement -= 1
        if self._polls_to_agreement:
            return False
        self._polls_to_agreement = AGREE_EVERY
        return self._agree()

    def agree_soon(self) -> None:
        """Make the next poll agree across ranks (after a save or a validation)."""
        self._polls_to_agreement = 1

    def _agree(self) -> bool:
        flag = torch.tensor([self.signal_number or 0], device=self._collective_device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        agreed = int(flag.item())
        if agreed and self.signal_number is None:
            self.signal_number = agreed
        return agreed != 0

    def state_dict(self) -> dict[str, Any] | None:
        """Return the interruption to record, or ``None`` when no signal stopped the run."""
        if self.signal_number is None:
            return None
        return {
            "signal": signal.Signals(self.signal_number).name,
            "unit_end_pending": self.unit_end_pending,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Take over whether the interrupted run still had a unit to end."""
        self.unit_end_pending = bool(state_dict.get("unit_end_pending", False))


__all__ = [
    "AGREE_EVERY",
    "PREEMPTION_SIGNALS",
    "Preempted",
    "Preemption",
    "ValidationInterruptedError",
]
