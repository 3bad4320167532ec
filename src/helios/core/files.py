"""Writing files so that a crash at any moment leaves the old file or the new one, whole."""

from __future__ import annotations

import os
import pathlib
import tempfile
from collections.abc import Callable
from typing import IO, Any

TEMPORARY_SUFFIX = ".tmp"
"""The suffix of the temporary files that atomic writes rename over their targets."""


def write_atomically(path: pathlib.Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Write ``path`` through a temporary file in the same folder, synced and renamed.

    ``write`` fills the temporary file; it is flushed, synced to disk and renamed over
    ``path``, then the folder is synced. The target is therefore either the old file or
    the complete new one. The temporary file (``.<name>.<random>.tmp``) is removed when
    anything fails; the error propagates.

    Args:
        path: the final path (its folder is created if needed).
        write: writes the contents into the binary file it is given.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX, dir=path.parent
    )
    try:
        os.fchmod(fd, new_file_mode())
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        pathlib.Path(tmp_name).unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def fsync_directory(folder: pathlib.Path) -> None:
    """Sync a folder's entries to disk (a rename in it is durable after this)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def new_file_mode() -> int:
    """Return the mode a plainly created file gets (``0o666`` less the umask).

    The umask is read from ``/proc/self/status`` where it can be: setting it to read it back
    (``os.umask``) would briefly change it for every thread, and saves run in a background
    thread.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


__all__ = ["TEMPORARY_SUFFIX", "fsync_directory", "new_file_mode", "write_atomically"]
