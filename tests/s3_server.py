"""A real S3-compatible server on localhost for the tests: moto's standalone server.

:py:class:`S3Server` runs ``python -m moto.server`` in a process of its own (moto keeps its
objects in memory, so the process lives for the whole test session). The tests talk to it
through the real s3fs client, pointed at it by the usual AWS environment variables
(:py:meth:`S3Server.environment`). :py:class:`Relay` is a TCP relay process in front of it
that a test kills and restarts to make the store unreachable for a while without losing
what it holds.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import urllib.request

RELAY_SCRIPT = pathlib.Path(__file__).with_name("tcp_relay.py")


def free_port() -> int:
    """A TCP port free on localhost now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_http(url: str, process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server process exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"no answer from {url} after {timeout} s")


def _stop(process: subprocess.Popen[bytes] | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class S3Server:
    """moto's S3 server in a process of its own, on a free localhost port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._buckets = 0

    @property
    def endpoint_url(self) -> str:
        """The server's URL."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the server and wait until it answers."""
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_for_http(f"{self.endpoint_url}/moto-api/", self.process)

    def stop(self) -> None:
        """Stop the server."""
        _stop(self.process)
        self.process = None

    def environment(self, endpoint_url: str | None = None) -> dict[str, str]:
        """The AWS environment variables that point S3 clients at the server."""
        return {
            "AWS_ENDPOINT_URL": endpoint_url or self.endpoint_url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def new_bucket(self, hint: str = "bucket") -> str:
        """Create a bucket of a fresh name; return the name."""
        import s3fs

        self._buckets += 1
        cleaned = "".join(c if c.isalnum() else "-" for c in hint.lower())[:40].strip("-")
        name = f"{cleaned or 'bucket'}-{self._buckets}"
        fs = s3fs.S3FileSystem(
            key="testing",
            secret="testing",
            endpoint_url=self.endpoint_url,
            skip_instance_cache=True,
        )
        fs.mkdir(name)
        return name


class Relay:
    """A TCP relay process from a port of its own to the server (killed to cut it off)."""

    def __init__(self, target_port: int) -> None:
        self.port = free_port()
        self.target_port = target_port
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        """The relay's URL (use it as the store's endpoint)."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start relaying (again) and wait until the port accepts connections."""
        self.process = subprocess.Popen(
            [sys.executable, str(RELAY_SCRIPT), str(self.port), str(self.target_port)]
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5),
            ):
                return
            time.sleep(0.05)
        raise RuntimeError("the relay did not start")

    def kill(self) -> None:
        """SIGKILL the relay: connections drop, new ones are refused."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None

    def stop(self) -> None:
        """Stop the relay."""
        _stop(self.process)
        self.process = None
