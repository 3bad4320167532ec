"""Progress bars for training, validation and testing.

Bars are tqdm bars on a terminal. When the output is not a terminal (a CI log, a file), each
refresh is written as its own line, and refreshes are spaced out, so a log gets a line now and
then instead of thousands of carriage returns.
"""

from __future__ import annotations

import re
import sys
from typing import Any, TextIO

from tqdm import tqdm

NON_TTY_INTERVAL_S = 30.0
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class _LineWriter:
    """A file-like wrapper that turns tqdm's carriage-return refreshes into whole lines."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        line = _ANSI_ESCAPE.sub("", text).replace("\r", "").rstrip()
        if line:
            self._stream.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self._stream.flush()


def _is_terminal(stream: Any) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def make_bar(
    enabled: bool,
    total: float | None,
    desc: str,
    unit: str,
    initial: int = 0,
    leave: bool = True,
) -> tqdm | None:
    """Create a progress bar, or return ``None`` when progress display is off.

    Args:
        enabled: whether to show the bar.
        total: the expected number of updates (``None`` when unknown or infinite).
        desc: the label.
        unit: the unit name.
        initial: the starting count (non-zero when resuming).
        leave: keep the bar on screen after it closes.

    Returns:
        The bar, or ``None``. Off a terminal, transient bars (``leave=False``) are not shown.
    """
    if not enabled:
        return None
    stream = sys.stderr
    if _is_terminal(stream):
        return tqdm(total=total, desc=desc, unit=unit, initial=initial, leave=leave)
    if not leave:
        return None
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        initial=initial,
        leave=leave,
        file=_LineWriter(stream),
        mininterval=NON_TTY_INTERVAL_S,
        maxinterval=NON_TTY_INTERVAL_S * 4,
        ascii=True,
        dynamic_ncols=False,
        ncols=100,
    )
