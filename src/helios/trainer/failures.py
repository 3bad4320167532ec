"""How a failed ``fit``/``test`` is shown: the traceback and a one-line summary on stderr.

The summary names the hook the exception came from, found by walking the traceback for
methods of :py:class:`~helios.model.Model`, :py:class:`~helios.plugins.Plugin` and
:py:class:`~helios.data.DataModule` subclasses, e.g.::

    fit failed in MyModel.train_step: ValueError: shapes do not match
"""

from __future__ import annotations

import logging as _std_logging
import pathlib
import sys
import traceback
import types
from typing import TextIO

import helios
from helios.core import distributed as dist
from helios.core import logging

_HELIOS_ROOT = pathlib.Path(helios.__file__).resolve().parent


def _hook_types() -> tuple[type, ...]:
    from helios.data import DataModule
    from helios.model import Model
    from helios.plugins import Plugin

    return (Model, Plugin, DataModule)


def _is_helios_code(code: types.CodeType) -> bool:
    try:
        return pathlib.Path(code.co_filename).resolve().is_relative_to(_HELIOS_ROOT)
    except (OSError, ValueError):
        return False


def find_hook(error: BaseException) -> str | None:
    """Return ``"<Class>.<method>"`` of the hook an exception came from, if any.

    The hook is the outermost frame of the traceback that runs a method of a Model, Plugin
    or DataModule subclass written outside helios (the method helios called); if there is
    none, the outermost such method written in helios (a default hook), else ``None``.

    Args:
        error: the exception (its ``__traceback__`` is read).

    Returns:
        The class name of the instance and the method name, or ``None``.
    """
    owners = _hook_types()
    fallback: str | None = None
    tb = error.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        code = frame.f_code
        names = code.co_varnames[: code.co_argcount]
        instance = frame.f_locals.get(names[0]) if names else None
        if isinstance(instance, owners):
            name = f"{type(instance).__name__}.{code.co_name}"
            if not _is_helios_code(code):
                return name
            if fallback is None:
                fallback = name
        tb = tb.tb_next
    return fallback


def failure_summary(
    error: BaseException, action: str = "fit", global_rank: int | None = None
) -> str:
    """Return the one-line summary of a failure.

    Args:
        error: the exception.
        action: what failed (``"fit"`` or ``"test"``).
        global_rank: the global rank the error was raised on, if distributed.

    Returns:
        ``<action> failed[ on rank <global_rank>] in <Class>.<hook>: <Type>: <first line of
        the message>`` (without ``in ...`` when no hook is found).
    """
    hook = find_hook(error)
    where = f" on rank {global_rank}" if global_rank is not None else ""
    if hook is not None:
        where += f" in {hook}"
    message = str(error).strip().splitlines()
    detail = f"{type(error).__name__}: {message[0]}" if message else type(error).__name__
    return f"{action} failed{where}: {detail}"


def report_failure(
    error: BaseException,
    action: str = "fit",
    global_rank: int | None = None,
    file: TextIO | None = None,
) -> str:
    """Write the traceback and the summary of a failure to stderr.

    A failure to write (a closed or broken stderr) is ignored: reporting never raises.

    Args:
        error: the exception.
        action: what failed (``"fit"`` or ``"test"``).
        global_rank: the global rank the error was raised on, if distributed.
        file: where to write; ``None`` is the current ``sys.stderr``.

    Returns:
        The text written: the full traceback, then the summary line, ending with a newline.
    """
    trace = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    text = f"{trace}{failure_summary(error, action, global_rank)}\n"
    stream = file if file is not None else sys.stderr
    try:
        stream.write(text)
        stream.flush()
    except (OSError, ValueError):
        pass
    return text


def log_uncaught(error: BaseException, action: str) -> None:
    """Show an unlisted exception on stderr (traceback and summary) and in the log file.

    Args:
        error: the exception.
        action: what failed (``"fit"`` or ``"test"``).
    """
    global_rank = dist.get_global_rank() if dist.is_dist_active() else None
    text = report_failure(error, action, global_rank)
    if logging.is_root_logger_active():
        logging.get_root_logger().log_to_file(_std_logging.ERROR, text.rstrip("\n"))


__all__ = ["failure_summary", "find_hook", "log_uncaught", "report_failure"]
