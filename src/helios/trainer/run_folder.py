"""One run per checkpoint folder, and a folder that can be written before training starts.

While ``fit`` runs, global rank 0 holds an exclusive ``fcntl.flock`` on the file
:py:data:`LOCK_NAME` in the checkpoint folder, which names the holder (process id, host,
start time and command). A second run started on the same folder while the first one lives
(a job requeued while the old one still runs) refuses to start with a message naming the
holder, instead of deleting the live run's in-flight temporary file. The lock belongs to the
open file, so the operating system drops it when the holding process dies: the leftovers of
a killed run never hold the folder. On a clean end the holder removes the file. Locks live
in the kernel of one machine; on a network file system they are only as good as its
``flock`` support (NFSv4 maps them to its own locks; some file systems ignore them).

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
import sys
import tempfile

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
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as error:
                raise _unusable(self.folder, error) from error
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                holder = _read_holder(fd)
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


def _read_holder(fd: int) -> str:
    try:
        data = os.pread(fd, 65536, 0)
        holder = json.loads(data.decode())
        return (
            f"pid {holder['pid']} on host {holder['host']}, started {holder['started']}: "
            f"{holder['command']}"
        )
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown: it is still starting or wrote no details"


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


__all__ = ["LOCK_NAME", "CheckpointFolderError", "RunFolderLock"]
