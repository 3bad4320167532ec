"""Helpers for :py:mod:`multiprocessing` processes (PyBlaze 1.1.6 ``pyblaze.utils.stdmp``)."""

from __future__ import annotations

import os
import time
from typing import Any


def available_cores() -> int:
    """Return the number of CPU cores this process may run on (its affinity, if known).

    Returns:
        At least 1.
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - platforms without affinity
        return os.cpu_count() or 1


def terminate(*processes: Any, force: bool = True) -> None:
    """Stop processes: wait up to a second in total for them to end, then terminate them.

    A process still alive after the shared one-second deadline gets ``SIGTERM``; with
    ``force``, one that survives that for 50 ms more gets ``SIGKILL``. Every process is
    joined afterwards, so none is left as a zombie.

    Args:
        *processes: :py:class:`multiprocessing.Process` objects (started or finished).
        force: kill processes that ignore ``SIGTERM``.
    """
    deadline = time.monotonic() + 1.0
    for process in processes:
        process.join(max(deadline - time.monotonic(), 0.1))
        if process.is_alive():
            process.terminate()
            process.join(0.05)
            if force and process.is_alive():
                process.kill()
            process.join()


__all__ = ["available_cores", "terminate"]
