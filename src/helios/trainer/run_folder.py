"""One run per checkpoint folder, and a folder that can be written before training starts.

While ``fit`` runs, global rank 0 holds an exclusive ``fcntl.flock`` on the file
:py:data:`LOCK_NAME` in the checkpoint folder, which names the holder (process id, host,
start time and command). A second run started on the same folder while the first one lives
(a job requeued while the old one still runs) refuses to start with a message naming the
holder, instead of deleting the live run's in-flight temporary file. The lock belongs to the
open file, so the operating system drops it when the holding process dies: the leftovers of
a killed run never hold the folder. On a clean end the holder removes the file. The lock
file is opened without following links, and one that is not a regular file (a symbolic link
to another file, a FIFO, a folder) is refused with a message, never written through. Its
record is untrusted data (:py:func:`parse_holder`): one that cannot be read names an unknown
holder (:py:func:`describe_holder`). Locks live in the kernel of one machine; on a network
file system they are only as good as its ``flock`` support (NFSv4 maps them to its own
locks; some file systems ignore them).

Before anything trains, the folder is created if needed and a probe file is written and
removed in it, so a folder that cannot be written fails ``fit`` at once rather than at the
first checkpoint.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import pathlib
import socket
import stat
import sys
import tempfile
from typing import Any

LOCK_NAME = ".helios-run.lock"
"""The name of the lock file in a checkpoint folder."""


class CheckpointFolderError(RuntimeError):
    """The checkpoint folder cannot be used: not writable, or held by another live run."""


class RunFolderLock:
    """The claim of one run on its checkpoint folder.

    Args:
        folder: the checkpoint folder of the run.
    """

    def __init__(self, folder: pathlib.Path) -> None:
        self.folder = folder
        self.path = folder / LOCK_NAME
        self._fd: int | None = None

    @property
    def is_held(self) -> bool:
        """Whether this object holds the lock now."""
        return self._fd is not None

    def acquire(self) -> None:
        """Create the folder if needed, check it can be written and lock it for this run.

        Raises:
            CheckpointFolderError: if the folder cannot be created or written, or another
                live process holds it (the message names that process).
        """
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise _unusable(self.folder, error) from error
        while self._fd is None:
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                holder = _read_holder(fd, self.path)
                os.close(fd)
                if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise _unusable(self.folder, error) from error
                raise CheckpointFolderError(
                    f"the checkpoint folder {self.folder} is in use by another run "
                    f"({holder}). Two runs must not write to one folder: wait for that run to "
                    "end or stop it, or give this run another chkpt_root or model save_name"
                ) from None
            if _same_file(fd, self.path):
                self._fd = fd
            else:  # the holder removed the file between our open and our lock: again
                os.close(fd)
        try:
            _write_holder(self._fd)
            _probe_writable(self.folder)
        except OSError as error:
            self.release()
            raise _unusable(self.folder, error) from error

    def _open(self) -> int:
        """Open (or create) the lock file without following a link; refuse a non-file."""
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
        try:
            fd = os.open(self.path, flags, 0o644)
        except OSError as error:
            if self.path.is_symlink():
                raise CheckpointFolderError(
                    f"the lock file {self.path} is a symbolic link (to "
                    f"{os.readlink(self.path)}); helios does not write through links: "
                    "remove it and start the run again"
                ) from None
            if error.errno == errno.EISDIR or self.path.is_dir():
                raise _not_a_file(self.path, "a folder") from None
            raise _unusable(self.folder, error) from error
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            raise _not_a_file(self.path, _kind(mode))
        return fd

    def release(self) -> None:
        """Remove the lock file and drop the lock (nothing happens if it is not held)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        # Removed while still locked: a run waiting on the old file sees it vanish.
        with contextlib.suppress(OSError):
            self.path.unlink(missing_ok=True)
        os.close(fd)


def _same_file(fd: int, path: pathlib.Path) -> bool:
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (on_disk.st_dev, on_disk.st_ino) == (opened.st_dev, opened.st_ino)


def _write_holder(fd: int) -> None:
    now = datetime.datetime.now(datetime.UTC)
    holder = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": now.strftime("%Y-%m-%d %H:%M:%S UTC"),
        "command": " ".join([sys.executable, *sys.argv]),
    }
    data = (json.dumps(holder) + "\n").encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def _read_holder(fd: int, path: pathlib.Path) -> str:
    try:
        data = os.pread(fd, 65536, 0)
    except OSError:
        data = b""
    return describe_holder(data, path)


def parse_holder(data: bytes) -> dict[str, Any] | None:
    """Parse the record a lock's holder wrote, as untrusted data (never raises).

    The record is JSON written by :py:class:`RunFolderLock` (or by a store's lock, which
    adds fields of its own); whatever else a file holds (not UTF-8, not JSON, JSON nested
    too deeply to parse, not an object) is no record.

    Args:
        data: the bytes of the lock file (or lock object).

    Returns:
        The record, or ``None`` if the data is not one.
    """
    try:
        holder = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError):
        return None
    return holder if isinstance(holder, dict) else None


def describe_holder(data: bytes, where: str | pathlib.Path) -> str:
    """Describe the holder a lock's record names, or say it is unknown (never raises).

    Args:
        data: the bytes of the lock file (or lock object).
        where: the lock's path or URL, named when the holder is unknown.

    Returns:
        ``pid <pid> on host <host>, started <time>: <command>``, or a sentence saying the
        lock is held by an unknown holder, naming ``where``.
    """
    holder = parse_holder(data) or {}
    fields = [holder.get(key) for key in ("pid", "host", "started", "command")]
    pid = fields[0]
    if isinstance(pid, int) and not isinstance(pid, bool) and _all_str(fields[1:]):
        return f"pid {pid} on host {fields[1]}, started {fields[2]}: {fields[3]}"
    return (
        f"held by an unknown holder: {where} names no readable process (the holder is "
        "still starting, or the file was written by something else)"
    )


def _all_str(values: list[object]) -> bool:
    return all(isinstance(value, str) for value in values)


def _kind(mode: int) -> str:
    kinds = {
        stat.S_ISFIFO: "a FIFO",
        stat.S_ISSOCK: "a socket",
        stat.S_ISCHR: "a character device",
        stat.S_ISBLK: "a block device",
        stat.S_ISDIR: "a folder",
    }
    return next((name for test, name in kinds.items() if test(mode)), "not a regular file")


def _not_a_file(path: pathlib.Path, kind: str) -> CheckpointFolderError:
    return CheckpointFolderError(
        f"the lock file {path} is not a regular file ({kind}); helios keeps the run's lock "
        "in a regular file it can write: remove it and start the run again"
    )


def _probe_writable(folder: pathlib.Path) -> None:
    fd, name = tempfile.mkstemp(prefix=".helios-write-probe.", dir=folder)
    try:
        os.write(fd, b"probe")
        os.fsync(fd)
    finally:
        os.close(fd)
        os.unlink(name)


def _unusable(folder: pathlib.Path, error: OSError) -> CheckpointFolderError:
    return CheckpointFolderError(
        f"the checkpoint folder {folder} cannot be written "
        f"({type(error).__name__}: {error}); checkpoints would fail. Fix its permissions or "
        "pass another chkpt_root"
    )


__all__ = [
    "LOCK_NAME",
    "CheckpointFolderError",
    "RunFolderLock",
    "describe_holder",
    "parse_holder",
]
