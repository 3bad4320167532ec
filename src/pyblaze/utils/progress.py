"""A console progress bar that ends in a one-line summary of elapsed time and metrics."""

from __future__ import annotations

import datetime
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TextIO

_BAR_WIDTH = 30
_REDRAW_INTERVAL_S = 0.1


def format_metrics(metrics: Mapping[str, Any]) -> str:
    """Format metrics as ``name: value`` pairs, sorted by name and separated by commas.

    Numbers use ``{:.5f}``. A key of the form ``name__<format>`` (e.g. ``acc__{:.1%}``)
    shows as ``name`` with its value in that format.

    Args:
        metrics: the metric values.

    Returns:
        The formatted text.
    """
    parts = []
    for key in sorted(metrics):
        value = metrics[key]
        name, sep, fmt = key.partition("__")
        if not sep:
            fmt = "{:.5f}"
        try:
            text = fmt.format(value)
        except (ValueError, TypeError):
            text = str(value)
        parts.append(f"{name}: {text}")
    return ", ".join(parts)


def _format_duration(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(seconds)))


class ProgressBar:
    """A progress bar over a known number of steps, printed to a text stream.

    On a terminal the bar is redrawn in place while it runs::

        [=========>                    ] (33.3%) ETA 0:00:20 [Elapsed 0:00:10]

    and :py:meth:`finish` replaces it with a summary line::

        [Elapsed 0:00:30] loss: 0.12345

    Streams that are not terminals (files, captured output) get the summary line only.

    Example:
        .. code-block:: python

            with ProgressBar(len(loader)) as bar:
                for batch in loader:
                    ...
                    bar.step()

            for batch in ProgressBar(loader):  # the same, driven by iteration
                ...

    Args:
        total: the number of steps, or an iterable whose length is the number of steps
            (iterating the bar then iterates it); ``None``, or an iterable without a
            length (a stream), when the number is not known: the bar then shows the
            steps done and the time, without a fraction or an ETA.
        file: the stream to write to; ``None`` means the current ``sys.stdout``.
        verbose: if false, nothing is printed.
        indent: the number of spaces in front of every line.
    """

    def __init__(
        self,
        total: int | Iterable[Any] | None,
        file: TextIO | None = None,
        verbose: bool = True,
        indent: int = 0,
    ) -> None:
        self.total: int | None
        if total is None or isinstance(total, int):
            self._iterable: Iterable[Any] | None = None
            self.total = total
        else:
            self._iterable = total
            try:
                self.total = len(total)  # type: ignore[arg-type]
            except TypeError:  # a stream: no total
                self.total = None
        if self.total is not None and self.total < 0:
            raise ValueError(f"total must be >= 0, but received {self.total}")
        self._file = file
        self.verbose = verbose
        self._indent = " " * indent
        self.count = 0
        self._start: float | None = None
        self._last_draw = 0.0
        self._drawn = False

    @classmethod
    def frac(
        cls, num: int, denom: int, file: TextIO | None = None, verbose: bool = True
    ) -> ProgressBar:
        """Create a bar of ``ceil(num / denom)`` steps, e.g. batches from a sample count.

        Args:
            num: the number of items.
            denom: the number of items per step (> 0).
            file: see :py:class:`ProgressBar`.
            verbose: see :py:class:`ProgressBar`.

        Returns:
            The bar.

        Raises:
            ValueError: if ``denom`` is not positive.
        """
        if denom <= 0:
            raise ValueError(f"denom must be greater than 0, got {denom!r}")
        return cls(-(-num // denom), file=file, verbose=verbose)

    @property
    def stream(self) -> TextIO:
        """The stream the bar writes to."""
        return self._file if self._file is not None else sys.stdout

    @property
    def elapsed(self) -> float:
        """Seconds since :py:meth:`start` (0 before it)."""
        return 0.0 if self._start is None else time.perf_counter() - self._start

    def start(self) -> None:
        """Start (or restart) the clock and draw the empty bar."""
        self._start = time.perf_counter()
        self.count = 0
        self._drawn = False
        self._draw(force=True)

    def step(self, num: int = 1) -> None:
        """Advance the bar.

        Args:
            num: the number of steps done.
        """
        if self._start is None:
            self.start()
        self.count += num
        self._draw(force=self.total is not None and self.count >= self.total)

    def finish(self, metrics: Mapping[str, Any] | None = None) -> None:
        """Replace the bar with the summary line: elapsed time and the metrics.

        Args:
            metrics: the values to show after the elapsed time (formatted by
                :py:func:`format_metrics`).
        """
        if not self.verbose:
            return
        line = f"{self._indent}[Elapsed {_format_duration(self.elapsed)}]"
        if metrics:
            line += " " + format_metrics(metrics)
        prefix = "\r\x1b[2K" if self._drawn else ""
        self.stream.write(prefix + line + "\n")
        self.stream.flush()
        self._drawn = False

    def _draw(self, force: bool = False) -> None:
        if not self.verbose or not self._is_terminal():
            return
        now = time.perf_counter()
        if not force and now - self._last_draw < _REDRAW_INTERVAL_S:
            return
        self._last_draw = now
        if self.total is None:  # no total known (a stream): the count and the time
            line = f"{self._indent}[{self.count} done] [Elapsed {_format_duration(self.elapsed)}]"
            self.stream.write("\r\x1b[2K" + line)
            self.stream.flush()
            self._drawn = True
            return
        frac = 1.0 if self.total == 0 else min(self.count / self.total, 1.0)
        filled = round(frac * _BAR_WIDTH)
        bar = "=" * filled
        if 0 < filled < _BAR_WIDTH:
            bar = bar[:-1] + ">"
        bar = bar.ljust(_BAR_WIDTH)
        elapsed = self.elapsed
        eta = "n/a" if self.count == 0 else _format_duration((1 - frac) / frac * elapsed)
        line = f"{self._indent}[{bar}] ({frac:.1%}) ETA {eta} [Elapsed {_format_duration(elapsed)}]"
        self.stream.write("\r\x1b[2K" + line)
        self.stream.flush()
        self._drawn = True

    def _is_terminal(self) -> bool:
        isatty = getattr(self.stream, "isatty", None)
        return bool(isatty is not None and isatty())

    def __enter__(self) -> ProgressBar:
        self.start()
        return self

    def __exit__(self, *args: object) -> None:
        self.finish()

    def __iter__(self) -> Iterator[Any]:
        if self._iterable is None:
            raise TypeError("iterate a ProgressBar only when it was created from an iterable")
        self.start()
        for item in self._iterable:
            yield item
            self.step()
        self.finish()


__all__ = ["ProgressBar", "format_metrics"]
