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
polls. It is started without waiting and read at the next agreement point, by when it has
long completed, so no rank waits for another mid-loop (on a GPU, the result reaches the host
through an asynchronous copy: no device synchronisation either). After every iteration or
epoch that validated or saved a checkpoint (points where the ranks synchronise anyway) the
next poll agrees at once. A rank that got the signal therefore stops at most
``2 * AGREE_EVERY`` iterations later, together with the others; the work done until then is
in the checkpoint. In one process the poll is an attribute test.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch

AGREE_EVERY = 8
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
        self._agree_now = False
        # The agreement in flight: the tensor its result lands in, and how to wait for it.
        self._pending: tuple[torch.Tensor, Callable[[], Any]] | None = None

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
        if self.settle():
            return True
        if self._agree_now:
            self._agree_now = False
            self._start_agreement()
            return self.settle()
        self._start_agreement()
        return False

    def agree_soon(self) -> None:
        """Make the next poll agree across ranks at once (after a save or a validation)."""
        self._polls_to_agreement = 1
        self._agree_now = True

    def _start_agreement(self) -> None:
        """All-reduce this rank's signal (the largest wins) without waiting for it."""
        flag = torch.tensor([self.signal_number or 0], device=self._collective_device)
        work = torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX, async_op=True)
        assert work is not None
        if flag.is_cuda:
            work.wait()  # orders the copy after the reduction on the stream; the host goes on
            host = torch.empty(1, dtype=flag.dtype, pin_memory=True)
            host.copy_(flag, non_blocking=True)
            copied = torch.cuda.Event()
            copied.record()
            self._pending = (host, copied.synchronize)
        else:
            self._pending = (flag, work.wait)

    def settle(self) -> bool:
        """Wait for the agreement in flight, if any; return whether it says stop.

        The end of training calls it, so no collective is left pending when the run goes on
        to other collectives or the process group is destroyed.
        """
        if self._pending is None:
            return False
        result, wait = self._pending
        self._pending = None
        wait()
        agreed = int(result.item())
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
