"""One run per checkpoint folder in an object store: a lease taken with a conditional write.

A store has no ``flock``. While ``fit`` runs, global rank 0 holds a lease on the folder:
the object ``.helios-run.lock``, created with a conditional write (S3 ``If-None-Match: *``,
fsspec's ``mode="create"`` on other stores) so that of two runs starting together exactly
one creates it. It names the holder (process id, host, start time, command) and is rewritten
every :py:data:`LEASE_SECONDS` / 3 by a heartbeat thread (on S3 conditionally on its own
``ETag``, so a run that lost its lease finds out).

A second run finding the object refuses to start with a message naming the holder, unless
the lease is stale:

* the holder ran on this machine (same host, boot and process namespace) and its process is
  gone: a killed run's leftovers never hold the folder;
* or the object was last renewed more than its lease ago by the store's clock (a run
  killed on another machine holds the folder at most that long).

A stale lease is taken over with a conditional write on its ``ETag`` (S3 ``If-Match``), so
two runs taking over together cannot both win. A holder whose lease was taken over (its
heartbeat stalled for longer than the lease) fails its next save instead of writing over
the new run's checkpoints. On a clean end the holder deletes the object.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import sys
import threading
import uuid
from typing import Any

from helios.core import logging

LOCK_NAME = ".helios-run.lock"
"""The lease object in a store folder (the same name as a local folder's lock file)."""

LEASE_SECONDS = float(os.environ.get("HELIOS_STORE_LEASE_SECONDS", "60"))
"""How long a lease holds without renewal (``HELIOS_STORE_LEASE_SECONDS`` overrides it)."""


def _machine() -> dict[str, Any]:
    """What tells this machine and process namespace apart (for the liveness check)."""
    boot = ""
    with contextlib.suppress(OSError), open("/proc/sys/kernel/random/boot_id") as file:
        boot = file.read().strip()
    namespace = 0
    with contextlib.suppress(OSError):
        namespace = os.stat("/proc/self/ns/pid").st_ino
    return {"host": socket.gethostname(), "boot": boot, "pid_namespace": namespace}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StoreLock:
    """The lease of one run on a checkpoint folder in a store (see the module docstring).

    Args:
        folder: the :py:class:`~helios.trainer.checkpoint.store.StoreFolder`.
    """

    def __init__(self, folder: Any) -> None:
        self.folder = folder
        self._etag: str | None = None
        self._token = uuid.uuid4().hex
        self._holder: dict[str, Any] = {}
        self._seen = b""  # the lease object as last read
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._held = False

    @property
    def is_held(self) -> bool:
        """Whether this object holds the lease now."""
        return self._held

    @property
    def _is_s3(self) -> bool:
        protocol = self.folder.fs.protocol
        protocols = (protocol,) if isinstance(protocol, str) else tuple(protocol)
        return any(p in ("s3", "s3a") for p in protocols)

    def _record(self) -> bytes:
        return json.dumps(self._holder).encode()

    def _put(self, **conditions: Any) -> None:
        response = self.folder.put(LOCK_NAME, self._record(), **conditions)
        etag = response.get("ETag") if isinstance(response, dict) else None
        self._etag = etag

    def acquire(self) -> None:
        """Take the lease, or refuse naming the live holder.

        Raises:
            CheckpointFolderError: if another live run holds the folder, or the store
                cannot be written.
        """
        from helios.trainer.run_folder import CheckpointFolderError

        now = datetime.datetime.now(datetime.UTC)
        self._holder = {
            "pid": os.getpid(),
            **_machine(),
            "started": now.strftime("%Y-%m-%d %H:%M:%S UTC"),
            "command": " ".join([sys.executable, *sys.argv]),
            "lease_seconds": LEASE_SECONDS,
            "token": self._token,
        }
        url = self.folder.url
        try:
            server_now = self._probe()
            try:
                self._put(mode="create")
            except FileExistsError:
                holder, etag, renewed = self._read()
                if not self._stale(holder, renewed, server_now):
                    raise CheckpointFolderError(
                        f"the checkpoint folder {url} is in use by another run "
                        f"({self._describe()}); its lease was renewed at {renewed} and lasts "
                        f"{holder.get('lease_seconds', LEASE_SECONDS)} s. Two runs must not "
                        "write to one folder: wait for that run to end or stop it, or give "
                        "this run another chkpt_root or model save_name"
                    ) from None
                self._take_over(etag, holder)
        except CheckpointFolderError:
            raise
        except Exception as error:
            raise CheckpointFolderError(
                f"the checkpoint folder {url} cannot be written ({type(error).__name__}: "
                f"{error}); checkpoints would fail. Check the URL, the credentials and that "
                "the store is reachable"
            ) from error
        self._held = True
        self._thread = threading.Thread(
            target=self._heartbeat, name="helios-store-lease", daemon=True
        )
        self._thread.start()

    def _probe(self) -> datetime.datetime | None:
        """Write and remove a probe object; return the store's clock (its time stamp)."""
        name = f".helios-write-probe.{self._token}"
        self.folder.put(name, b"probe")
        try:
            info = self.folder.fs.info(self.folder.key(name))
            stamp = info.get("LastModified") or info.get("mtime") or info.get("created")
        finally:
            self.folder.remove(name)
        return _as_datetime(stamp)

    def _read(self) -> tuple[dict[str, Any], str | None, datetime.datetime | None]:
        key = self.folder.key(LOCK_NAME)
        self.folder.fs.invalidate_cache(key)
        info = self.folder.fs.info(key)
        from helios.trainer.run_folder import parse_holder

        data = self.folder.cat(LOCK_NAME)
        self._seen = data
        holder = parse_holder(data) or {}
        stamp = info.get("LastModified") or info.get("mtime") or info.get("created")
        return holder, info.get("ETag"), _as_datetime(stamp)

    def _describe(self) -> str:
        """The holder named by the lease object last read (the same words as a local lock)."""
        from helios.trainer.run_folder import describe_holder

        return describe_holder(self._seen, str(self.folder.url / LOCK_NAME))

    def _stale(
        self,
        holder: dict[str, Any],
        renewed: datetime.datetime | None,
        server_now: datetime.datetime | None,
    ) -> bool:
        mine = _machine()
        same_machine = all(holder.get(k) == mine[k] for k in ("host", "boot", "pid_namespace"))
        pid = holder.get("pid")
        if same_machine and isinstance(pid, int) and not _alive(pid):
            return True
        if renewed is None or server_now is None:
            return False
        lease = holder.get("lease_seconds")
        lease = float(lease) if isinstance(lease, int | float) else LEASE_SECONDS
        return (server_now - renewed).total_seconds() > lease

    def _take_over(self, etag: str | None, holder: dict[str, Any]) -> None:
        from helios.trainer.run_folder import CheckpointFolderError

        logging.get_root_logger().warning(
            f"taking over the stale lease of {self.folder.url} from a run that is gone "
            f"({self._describe()})"
        )
        try:
            if self._is_s3 and etag:
                self._put(IfMatch=etag)
            else:
                self.folder.remove(LOCK_NAME)
                self._put(mode="create")
        except (FileExistsError, OSError) as error:
            raise CheckpointFolderError(
                f"the checkpoint folder {self.folder.url} was claimed by another run while "
                f"this one took over a stale lease ({error}); wait for that run to end"
            ) from error

    def _renew(self) -> None:
        if self._is_s3 and self._etag:
            self._put(IfMatch=self._etag)
            return
        holder, _, _ = self._read()
        if holder.get("token") != self._token:
            raise FileExistsError("another run holds the lease now")
        self._put()

    def _heartbeat(self) -> None:
        interval = max(LEASE_SECONDS / 3.0, 0.05)
        while not self._stop.wait(interval):
            try:
                self._renew()
            except (FileExistsError, ValueError) as error:
                self._lost(error)
                return
            except OSError as error:
                if "pre-condition" in str(error) or "precondition" in str(error).lower():
                    self._lost(error)
                    return
                logging.get_root_logger().warning(
                    f"could not renew the lease of {self.folder.url} ({error}); trying again"
                )
            except Exception as error:
                logging.get_root_logger().warning(
                    f"could not renew the lease of {self.folder.url} ({error}); trying again"
                )

    def _lost(self, error: BaseException) -> None:
        message = (
            f"this run lost its lease on the checkpoint folder {self.folder.url} (it was not "
            f"renewed in time and another run took it over: {error}); it saves no more "
            "checkpoints there"
        )
        logging.get_root_logger().error(message)
        self.folder.claim_error = message
        self._held = False

    def release(self) -> None:
        """Stop renewing and delete the lease object (nothing happens if it is not held)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if not self._held:
            return
        self._held = False
        with contextlib.suppress(Exception):
            holder, _, _ = self._read()
            if holder.get("token") == self._token:
                self.folder.remove(LOCK_NAME)


def _as_datetime(stamp: Any) -> datetime.datetime | None:
    if isinstance(stamp, datetime.datetime):
        return stamp if stamp.tzinfo else stamp.replace(tzinfo=datetime.UTC)
    if isinstance(stamp, int | float):
        return datetime.datetime.fromtimestamp(stamp, datetime.UTC)
    if isinstance(stamp, str):
        with contextlib.suppress(ValueError):
            return _as_datetime(datetime.datetime.fromisoformat(stamp))
    return None


__all__ = ["LEASE_SECONDS", "LOCK_NAME", "StoreLock"]
