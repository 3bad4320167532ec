"""A PostgreSQL server for the tests: Debian's postgresql-15 with its cluster in a temp folder.

``initdb`` makes a new cluster in the folder given, owned by the ``postgres`` account (the
server refuses to run as root), with password-less ``trust`` authentication for the
addresses it listens on; the server runs in the foreground as a child of the test process,
on a free port, and ends with it (``PR_SET_PDEATHSIG``) even if the test process is killed.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pathlib
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence

ACCOUNT = "postgres"


def bin_dir() -> pathlib.Path | None:
    """Return the folder of ``initdb`` and ``postgres`` (Debian keeps them off the PATH)."""
    for candidate in sorted(pathlib.Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").exists() and (candidate / "postgres").exists():
            return candidate
    found = shutil.which("initdb")
    return pathlib.Path(found).resolve().parent if found else None


def available() -> str | None:
    """Return why a PostgreSQL server cannot be started here, or None if it can."""
    if bin_dir() is None:
        return "needs PostgreSQL's initdb and postgres (Debian package postgresql-15)"
    try:
        pwd.getpwnam(ACCOUNT)
    except KeyError:
        return f"needs the '{ACCOUNT}' account that Debian's postgresql package creates"
    if os.geteuid() != 0:
        return f"needs root to run the server as '{ACCOUNT}'"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return 'needs the psycopg driver (pip install "psycopg[binary]")'
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_account() -> None:
    """In the child: die with the parent, then drop root for the ``postgres`` account."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    account = pwd.getpwnam(ACCOUNT)
    os.setgid(account.pw_gid)
    os.initgroups(ACCOUNT, account.pw_gid)
    os.setuid(account.pw_uid)


class PostgresServer:
    """One PostgreSQL server (see the module docstring).

    Args:
        workdir: the folder for the cluster's data and log (created, given to ``postgres``).
        listen: the addresses the server listens on, besides ``127.0.0.1``.
    """

    def __init__(self, workdir: pathlib.Path, listen: Sequence[str] = ()) -> None:
        self.workdir = workdir
        self.listen = ["127.0.0.1", *listen]
        self.port = 0
        self._server: subprocess.Popen[bytes] | None = None

    @property
    def data(self) -> pathlib.Path:
        """The cluster's data folder."""
        return self.workdir / "data"

    def url(self, database: str = "postgres", host: str = "127.0.0.1") -> str:
        """Return the SQLAlchemy URL of a database, reached at ``host`` (driver psycopg 3)."""
        return f"postgresql+psycopg://{ACCOUNT}@{host}:{self.port}/{database}"

    def start(self, timeout: float = 60) -> PostgresServer:
        """Create the cluster, start the server and wait until it accepts connections."""
        binaries = bin_dir()
        assert binaries is not None
        account = pwd.getpwnam(ACCOUNT)
        self.workdir.mkdir(parents=True, exist_ok=True)
        os.chown(self.workdir, account.pw_uid, account.pw_gid)
        for parent in self.workdir.parents:
            if not parent.stat().st_mode & 0o001:
                raise ValueError(
                    f"{ACCOUNT!r} cannot reach {self.workdir}: {parent} is not searchable "
                    "by other users; put the server's folder under /tmp"
                )
        subprocess.run(
            [
                str(binaries / "initdb"),
                "--pgdata",
                str(self.data),
                "--auth",
                "trust",
                "--username",
                ACCOUNT,
                "--no-sync",
                "--encoding",
                "UTF8",
                "--no-instructions",
            ],
            check=True,
            capture_output=True,
            preexec_fn=_as_account,
            timeout=120,
        )
        hba = self.data / "pg_hba.conf"
        hba.write_text(hba.read_text() + "host all all 0.0.0.0/0 trust\n")
        self.port = _free_port()
        with (self.workdir / "server.log").open("ab") as log:
            self._server = subprocess.Popen(
                [
                    str(binaries / "postgres"),
                    "-D",
                    str(self.data),
                    "-p",
                    str(self.port),
                    "-c",
                    f"listen_addresses={','.join(self.listen)}",
                    "-c",
                    f"unix_socket_directories={self.workdir}",
                    "-c",
                    "fsync=off",
                    "-c",
                    "max_connections=100",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_as_account,
            )
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            assert self._server is not None
            if self._server.poll() is not None:
                raise RuntimeError(f"postgres exited:\n{self.log()}")
            try:
                psycopg.connect(self._dsn()).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def _dsn(self, database: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user={ACCOUNT} dbname={database}"

    def log(self) -> str:
        """Return the tail of the server's log."""
        path = self.workdir / "server.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def create_database(self, name: str) -> str:
        """Create a database; return its URL."""
        import psycopg

        with psycopg.connect(self._dsn(), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        """Stop the server at once (an immediate shutdown; safe to repeat)."""
        server, self._server = self._server, None
        if server is None:
            return
        with contextlib.suppress(ProcessLookupError):
            server.send_signal(signal.SIGQUIT)  # immediate shutdown
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=20)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
