"""A real S3-compatible server on localhost for the tests: moto's standalone server.

:py:class:`S3Server` runs moto's server (``python s3_server.py moto PORT PARENT``) in a
process of its own (moto keeps its objects in memory, so the process lives for the whole
test session). The tests talk to it through the real s3fs client, pointed at it by the usual
AWS environment variables (:py:meth:`S3Server.environment`). :py:class:`Relay` is a TCP
relay process in front of it (``python s3_server.py relay PORT TARGET PARENT``) that a test
kills and restarts to make the store unreachable for a while without losing what it holds.

No process outlives the tests: each child exits by itself when the process that started it
is gone (a test session killed with SIGKILL included), and a relay's delayed restart is
cancelled when the relay is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

SCRIPT = pathlib.Path(__file__)


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


def _spawn(*arguments: str) -> subprocess.Popen[bytes]:
    """Run this file with ``arguments`` and the current process as the parent to watch."""
    command = [sys.executable, str(SCRIPT), *arguments, str(os.getpid())]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def forget_clients() -> None:
    """Drop the S3 clients fsspec keeps (its instance cache is per class, and its key does
    not include the environment), so the next one reads the AWS environment afresh."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()


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
        self.process = _spawn("moto", str(self.port))
        try:
            _wait_for_http(f"{self.endpoint_url}/moto-api/", self.process)
        except BaseException:
            self.stop()
            raise

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
    """A TCP relay process from a port of its own to the server (killed to cut it off).

    Thread-safe: a test may restart it from a timer (:py:meth:`restart_after`) while
    training runs. :py:meth:`close` cancels a pending restart and stops the process; after
    it, :py:meth:`start` does nothing.
    """

    def __init__(self, target_port: int) -> None:
        self.port = free_port()
        self.target_port = target_port
        self.process: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._timers: list[threading.Timer] = []

    @property
    def endpoint_url(self) -> str:
        """The relay's URL (use it as the store's endpoint)."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start relaying (again) and wait until the port accepts connections."""
        with self._lock:
            if self._closed:
                return
            _stop(self.process)
            self.process = _spawn("relay", str(self.port), str(self.target_port))
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and self.process.poll() is None:
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection(("127.0.0.1", self.port), timeout=0.5),
                ):
                    return
                time.sleep(0.05)
            _stop(self.process)
            self.process = None
        raise RuntimeError("the relay did not start")

    def restart_after(self, seconds: float) -> None:
        """Start the relay again after ``seconds`` (from a timer thread)."""
        timer = threading.Timer(seconds, self.start)
        timer.daemon = True
        with self._lock:
            if self._closed:
                return
            self._timers.append(timer)
        timer.start()

    def kill(self) -> None:
        """SIGKILL the relay: connections drop, new ones are refused."""
        with self._lock:
            if self.process is not None and self.process.poll() is None:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait()
            self.process = None

    def close(self) -> None:
        """Cancel a pending restart and stop the relay for good."""
        with self._lock:
            self._closed = True
            timers, self._timers = self._timers, []
        for timer in timers:
            timer.cancel()
            timer.join()
        with self._lock:
            _stop(self.process)
            self.process = None


# -- the child processes ------------------------------------------------------------------------


def _exit_with_parent(parent: int) -> None:
    """Exit this process as soon as ``parent`` is no longer its parent (it died)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.2)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


async def _relay(listen: int, target: int) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    server = await asyncio.start_server(handle, "127.0.0.1", listen)
    async with server:
        await server.serve_forever()


def _child(argv: list[str]) -> None:
    """``moto PORT PARENT``: moto's server; ``relay PORT TARGET PARENT``: a TCP relay."""
    _exit_with_parent(int(argv[-1]))
    if argv[0] == "moto":
        from moto.server import main

        main(["-H", "127.0.0.1", "-p", argv[1]])
    elif argv[0] == "relay":
        asyncio.run(_relay(int(argv[1]), int(argv[2])))
    else:
        raise SystemExit(f"unknown child {argv[0]!r}")


if __name__ == "__main__":
    _child(sys.argv[1:])
