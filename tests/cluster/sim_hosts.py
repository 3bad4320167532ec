"""Simulated hosts on this machine: one network namespace per node, joined by a bridge.

Each node of a :py:class:`SimHosts` has what a real cluster node has and a plain process on
this machine lacks:

* its own network stack and address (``10.226.<net>.<k+1>``) on a veth pair whose other end
  is plugged into a bridge in the root namespace; the root namespace (where the test, the
  PostgreSQL server and SLURM run) is ``10.226.<net>.254`` on that bridge;
* its own hostname (``hlt<net>-node<k>``), set in a UTS namespace of its own for every
  command, resolved by every node through ``/etc/netns/<namespace>/hosts`` (which
  ``ip netns exec`` mounts over ``/etc/hosts``): ``torchrun``'s c10d rendezvous decides
  which node hosts its store by comparing the endpoint with the local hostname, and gloo
  binds to the address the hostname resolves to;
* its own local disk: ``<workdir>/node<k>`` is bind-mounted (in the command's own mount
  namespace) over ``<workdir>/local``, so the same path names a different folder on each
  node, while ``<workdir>/shared`` is seen by all.

Everything is named after a small network number ``<net>`` taken under a lock, with a record
file holding the owner's pid, so that parallel test runs never clash and the namespaces of a
run that crashed (owner dead) are removed by the next one. Needs root, ``ip`` (iproute2) and
``unshare`` (util-linux).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pathlib
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence

STATE_DIR = pathlib.Path("/run/helios-tests")
_PREFIX = "hlt"
_SUBNET = "10.226"
_ROOT_HOST = 254


def available() -> str | None:
    """Return why simulated hosts cannot be made here, or None if they can."""
    if os.geteuid() != 0:
        return "needs root for network namespaces"
    for tool in ("ip", "unshare", "mount"):
        if shutil.which(tool) is None:
            return f"needs the '{tool}' command"
    return None


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=check, timeout=60)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def _state_lock() -> Iterator[None]:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    with (STATE_DIR / "netns.lock").open("a+b") as file:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(file.fileno(), fcntl.LOCK_UN)


def _namespaces() -> list[str]:
    out = _run("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _kill_namespace_processes(namespace: str) -> None:
    """SIGKILL every process in the namespace and wait until they are gone (at most 10 s)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        out = _run("ip", "netns", "pids", namespace, check=False).stdout.split()
        pids = [int(pid) for pid in out if pid.isdigit()]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


def _links() -> list[str]:
    out = _run("ip", "-o", "link", "show", check=False).stdout
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line]


def _remove_network(net: int) -> None:
    """Remove the namespaces, links, bridge and hosts files of network ``net`` (what exists).

    The links are deleted explicitly: a deleted namespace may linger in the kernel (while
    sockets of its killed processes close), keeping its veth pairs.
    """
    for link in _links():
        if link.startswith(f"{_PREFIX}{net}v"):
            _run("ip", "link", "delete", link, check=False)
    for namespace in _namespaces():
        if namespace.startswith(f"{_PREFIX}{net}n"):
            _kill_namespace_processes(namespace)
            _run("ip", "netns", "delete", namespace, check=False)
            shutil.rmtree(pathlib.Path("/etc/netns") / namespace, ignore_errors=True)
    _run("ip", "link", "delete", f"{_PREFIX}{net}br", check=False)
    (STATE_DIR / f"net{net}.pid").unlink(missing_ok=True)


def clean_stale() -> list[int]:
    """Remove the networks whose owner process is dead; return their numbers."""
    removed = []
    with _state_lock():
        for record in STATE_DIR.glob("net*.pid"):
            net = int(record.stem.removeprefix("net"))
            try:
                owner = int(record.read_text().strip() or "0")
            except (OSError, ValueError):
                owner = 0
            if owner and _alive(owner):
                continue
            _remove_network(net)
            removed.append(net)
    return removed


class SimHosts:
    """``nodes`` simulated hosts in network namespaces (see the module docstring).

    Use it as a context manager, or call :py:meth:`start` and then :py:meth:`stop` in a
    ``finally``: stopping kills every process left in the namespaces and removes them.

    Args:
        nodes: how many hosts.
        workdir: the folder that holds ``shared/``, ``local/`` and ``node<k>/``.
    """

    def __init__(self, nodes: int, workdir: pathlib.Path) -> None:
        self.nodes = nodes
        self.workdir = workdir
        self.net = -1

    # -- names -------------------------------------------------------------------------------

    def namespace(self, node: int) -> str:
        """Return the network namespace of a node."""
        return f"{_PREFIX}{self.net}n{node}"

    def hostname(self, node: int) -> str:
        """Return the hostname of a node (resolvable on every node)."""
        return f"{_PREFIX}{self.net}-node{node}"

    def address(self, node: int) -> str:
        """Return the IPv4 address of a node."""
        return f"{_SUBNET}.{self.net}.{node + 1}"

    @property
    def root_address(self) -> str:
        """The address of the root namespace on the bridge (servers run there)."""
        return f"{_SUBNET}.{self.net}.{_ROOT_HOST}"

    @property
    def shared(self) -> pathlib.Path:
        """A folder every node sees (a shared file system)."""
        return self.workdir / "shared"

    @property
    def local(self) -> pathlib.Path:
        """The path of every node's local disk: a different folder on each node."""
        return self.workdir / "local"

    def local_disk(self, node: int) -> pathlib.Path:
        """Return the folder that is ``local`` on ``node``, as seen from outside the nodes."""
        return self.workdir / f"node{node}"

    def _link(self, node: int) -> str:
        return f"{_PREFIX}{self.net}v{node}"

    # -- life cycle --------------------------------------------------------------------------

    def start(self) -> SimHosts:
        """Create the bridge, the namespaces, their links, addresses and hosts files."""
        clean_stale()
        with _state_lock():
            taken = {int(p.stem.removeprefix("net")) for p in STATE_DIR.glob("net*.pid")}
            free = [net for net in range(1, 250) if net not in taken]
            if not free:
                raise RuntimeError("no free simulated network number left")
            self.net = free[0]
            # Leftovers of a record-less crash under this number would clash: clear them.
            _remove_network(self.net)
            (STATE_DIR / f"net{self.net}.pid").write_text(str(os.getpid()))
        try:
            self._create()
        except BaseException:
            self.stop()
            raise
        return self

    def _create(self) -> None:
        bridge = f"{_PREFIX}{self.net}br"
        _run("ip", "link", "add", bridge, "type", "bridge")
        _run("ip", "addr", "add", f"{self.root_address}/24", "dev", bridge)
        _run("ip", "link", "set", bridge, "up")
        hosts = ["127.0.0.1 localhost", f"{self.root_address} {_PREFIX}{self.net}-root"]
        hosts += [f"{self.address(k)} {self.hostname(k)}" for k in range(self.nodes)]
        for folder in (self.shared, self.local):
            folder.mkdir(parents=True, exist_ok=True)
        for node in range(self.nodes):
            namespace, link = self.namespace(node), self._link(node)
            _run("ip", "netns", "add", namespace)
            _run("ip", "link", "add", link, "type", "veth", "peer", "name", f"{link}p")
            _run("ip", "link", "set", f"{link}p", "netns", namespace)
            _run("ip", "link", "set", link, "master", bridge)
            _run("ip", "link", "set", link, "up")
            _run("ip", "-n", namespace, "link", "set", f"{link}p", "name", "eth0")
            _run("ip", "-n", namespace, "addr", "add", f"{self.address(node)}/24", "dev", "eth0")
            _run("ip", "-n", namespace, "link", "set", "lo", "up")
            _run("ip", "-n", namespace, "link", "set", "eth0", "up")
            etc = pathlib.Path("/etc/netns") / namespace
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "hosts").write_text("\n".join(hosts) + "\n")
            # No name server is reachable from a node: fail DNS look-ups at once (they
            # would otherwise wait for the host's resolver, seconds each).
            (etc / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
            self.local_disk(node).mkdir(parents=True, exist_ok=True)

    def stop(self) -> None:
        """Kill every process on the nodes and remove the namespaces (safe to repeat)."""
        if self.net < 0:
            return
        with _state_lock():
            _remove_network(self.net)

    def __enter__(self) -> SimHosts:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- running things ----------------------------------------------------------------------

    def command(self, node: int, args: Sequence[str]) -> list[str]:
        """Return the command line that runs ``args`` on ``node``.

        The command gets the node's network namespace, its hostname (in a UTS namespace of
        its own) and its local disk mounted over :py:attr:`local`.
        """
        script = 'hostname "$0" && mount --bind "$1" "$2" && shift 2 && exec "$@"'
        return [
            "ip",
            "netns",
            "exec",
            self.namespace(node),
            "unshare",
            "--uts",
            "sh",
            "-c",
            script,
            self.hostname(node),
            str(self.local_disk(node)),
            str(self.local),
            *args,
        ]

    def popen(
        self,
        node: int,
        args: Sequence[str],
        log: pathlib.Path,
        env: dict[str, str] | None = None,
        cwd: pathlib.Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``args`` on ``node``, its output (stdout and stderr) going to ``log``."""
        with log.open("ab") as output:
            return subprocess.Popen(
                self.command(node, args),
                stdout=output,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,
            )

    def run(
        self, node: int, args: Sequence[str], timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run ``args`` on ``node`` and wait for it."""
        return subprocess.run(
            self.command(node, args), capture_output=True, text=True, timeout=timeout
        )

    def pids(self, node: int) -> list[int]:
        """Return the processes running on a node."""
        out = _run("ip", "netns", "pids", self.namespace(node), check=False).stdout.split()
        return [int(pid) for pid in out if pid.isdigit()]

    def kill_node(self, node: int) -> list[int]:
        """SIGKILL every process on a node at once, as when the machine dies; return them."""
        pids = self.pids(node)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _kill_namespace_processes(self.namespace(node))
        return pids

    def set_link(self, node: int, up: bool) -> None:
        """Take the node's network link down (a partition) or bring it back up."""
        _run("ip", "link", "set", self._link(node), "up" if up else "down")
