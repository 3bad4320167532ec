"""A one-node SLURM cluster for the tests: munged, slurmctld and slurmd in a temp folder.

The daemons are Debian's ``slurm-wlm`` (22.05) and ``munge``, run as root with their
configuration, key, state, spool and logs in the folder given, and ports picked free, so
the cluster shares nothing with a system installation or another test run. The settings
that work on a plain machine without cgroups or accounting are ``ProctrackType=
proctrack/linuxproc``, ``TaskPlugin=task/none``, ``JobAcctGatherType=jobacct_gather/none``
and ``SelectType=select/cons_tres``.

All the daemons, and so every job they start, run in a PID namespace of their own
(``unshare --pid --fork``) whose first process ends with the test process
(``PR_SET_PDEATHSIG``): stopping the cluster, or the test process dying in any way, kills
everything the cluster ever started. Client commands (``sbatch``, ``squeue``, ``scontrol``,
``scancel``) run from outside with ``SLURM_CONF`` pointing at the configuration.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scontrol", "scancel", "srun", "sinfo")


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")


def available() -> str | None:
    """Return why a SLURM cluster cannot be started here, or None if it can."""
    if os.geteuid() != 0:
        return "needs root to run slurmd"
    for tool in (*DAEMONS, *CLIENTS, "unshare"):
        if _which(tool) is None:
            return f"needs '{tool}' (Debian packages slurmctld, slurmd, slurm-client, munge)"
    return None


def _free_ports(count: int) -> list[int]:
    """Return ``count`` different TCP ports that are free now (held together while picked)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG


# A PID namespace whose first process ends with unshare, which ends with the test process.
_NAMESPACE = ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc"]

_SUPERVISOR = r"""
set -e
cd "$DIR"
munged --foreground --force --socket="$DIR/munge.socket" --key-file="$DIR/munge.key" \
    --pid-file="$DIR/munged.pid" --log-file="$DIR/munged.log" --seed-file="$DIR/munged.seed" &
for i in $(seq 100); do [ -S "$DIR/munge.socket" ] && break; sleep 0.05; done
slurmctld -D -i -f "$DIR/slurm.conf" >"$DIR/slurmctld.out" 2>&1 &
slurmd -D -N "$NODE" -f "$DIR/slurm.conf" >"$DIR/slurmd.out" 2>&1 &
wait
"""


class SlurmCluster:
    """One SLURM node on this machine (see the module docstring).

    Args:
        workdir: the folder for configuration, key, state and logs (created).
        cpus: the CPUs the node offers.
        kill_wait: seconds between SIGTERM and SIGKILL when a job is cancelled
            (``KillWait``).
        jobs_per_cpu: how many jobs may share a CPU (the tests' jobs mostly sleep).
    """

    def __init__(
        self, workdir: pathlib.Path, cpus: int = 2, kill_wait: int = 10, jobs_per_cpu: int = 4
    ) -> None:
        self.workdir = workdir
        self.cpus = cpus
        self.kill_wait = kill_wait
        self.jobs_per_cpu = jobs_per_cpu
        self.node = socket.gethostname()
        self._supervisor: subprocess.Popen[bytes] | None = None

    @property
    def conf(self) -> pathlib.Path:
        """The ``slurm.conf`` of the cluster."""
        return self.workdir / "slurm.conf"

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """Return an environment in which the client commands talk to this cluster."""
        env = {**os.environ, "SLURM_CONF": str(self.conf)}
        for key in list(env):
            # A test run inside a SLURM job must not leak that job into ours.
            if key.startswith("SLURM_") and key != "SLURM_CONF":
                del env[key]
        env.update(extra or {})
        return env

    def _write_config(self) -> None:
        d = self.workdir
        for sub in ("state", "spool"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        key = d / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        (d / "plugstack.conf").write_text("")
        controller_port, node_port = _free_ports(2)
        settings = {
            "ClusterName": f"hlt{os.getpid()}",
            "SlurmctldHost": f"{self.node}(127.0.0.1)",
            "SlurmctldPort": controller_port,
            "SlurmdPort": node_port,
            "AuthType": "auth/munge",
            "AuthInfo": f"socket={d / 'munge.socket'},cred_expire=5",
            "CredType": "cred/munge",
            "SlurmUser": "root",
            "SlurmdUser": "root",
            "StateSaveLocation": d / "state",
            "SlurmdSpoolDir": d / "spool",
            "SlurmctldPidFile": d / "slurmctld.pid",
            "SlurmdPidFile": d / "slurmd.pid",
            "SlurmctldLogFile": d / "slurmctld.log",
            "SlurmdLogFile": d / "slurmd.log",
            "PlugStackConfig": d / "plugstack.conf",
            "ProctrackType": "proctrack/linuxproc",
            "TaskPlugin": "task/none",
            "JobAcctGatherType": "jobacct_gather/none",
            "SelectType": "select/cons_tres",
            "SelectTypeParameters": "CR_CPU",
            "MpiDefault": "none",
            "ReturnToService": 2,
            "SchedulerType": "sched/builtin",
            # A requeued job waits cred_expire (above: 5 s, not 120 s), then the next
            # scheduling pass (every second, not 60 s) starts it.
            "SchedulerParameters": "sched_interval=1",
            "KillWait": self.kill_wait,
            "MinJobAge": 600,
            "JobRequeue": 1,
            "InactiveLimit": 0,
            "SlurmctldTimeout": 30,
            "SlurmdTimeout": 30,
            "TmpFS": d,
        }
        lines = [f"{key}={value}" for key, value in settings.items()]
        lines.append(f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} State=UNKNOWN")
        lines.append(
            "PartitionName=main Nodes=ALL Default=YES MaxTime=INFINITE State=UP "
            f"OverSubscribe=FORCE:{self.jobs_per_cpu}"
        )
        self.conf.write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = 60) -> SlurmCluster:
        """Write the configuration, start the daemons and wait until the node is idle."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        env = {**self.env(), "DIR": str(self.workdir), "NODE": self.node}
        with (self.workdir / "supervisor.out").open("wb") as out:
            self._supervisor = subprocess.Popen(
                [*_NAMESPACE, "bash", "-c", _SUPERVISOR],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        try:
            self._wait_until_idle(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            assert self._supervisor is not None
            if self._supervisor.poll() is not None:
                break
            result = self.client("sinfo", "-h", "-o", "%t", check=False)
            state = result.stdout.strip()
            if result.returncode == 0 and state == "idle":
                return
            time.sleep(0.2)
        raise RuntimeError(f"the SLURM node did not become idle (state {state!r}):\n{self.logs()}")

    def logs(self) -> str:
        """Return the tail of every daemon log, for failure messages."""
        parts = []
        for name in ("supervisor.out", "slurmctld.log", "slurmd.log", "munged.log"):
            path = self.workdir / name
            if path.exists():
                parts.append(f"--- {name}\n{path.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)

    def stop(self) -> None:
        """Kill the daemons and every job (safe to repeat)."""
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is None:
            return
        # unshare ignores SIGTERM while it waits; killed, it takes the namespace's first
        # process with it (--kill-child), and with that every process of the namespace
        # (daemons, slurmstepd, job scripts, tasks).
        supervisor.kill()
        supervisor.wait(timeout=30)

    def __enter__(self) -> SlurmCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- client commands ---------------------------------------------------------------------

    def client(
        self, *args: str, check: bool = True, cwd: pathlib.Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a client command (``sbatch``, ``scontrol``, ...) against this cluster."""
        result = subprocess.run(
            args, capture_output=True, text=True, env=self.env(), cwd=cwd, timeout=60
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args)} failed ({result.returncode}): {result.stdout}{result.stderr}"
            )
        return result

    def sbatch(self, script: pathlib.Path, *options: str, cwd: pathlib.Path) -> int:
        """Submit a batch script; return the job id."""
        out = self.client("sbatch", "--parsable", *options, str(script), cwd=cwd).stdout
        return int(out.strip().split(";")[0])

    def job(self, job_id: int) -> dict[str, str]:
        """Return ``scontrol show job`` of a job as a dict (empty once it is forgotten)."""
        return self.jobs().get(job_id, {})

    def jobs(self) -> dict[int, dict[str, str]]:
        """Return ``scontrol show job`` of every job the controller knows, by job id."""
        result = self.client("scontrol", "-o", "show", "job", check=False)
        found: dict[int, dict[str, str]] = {}
        for line in result.stdout.splitlines() if result.returncode == 0 else []:
            fields: dict[str, str] = {}
            for match in re.finditer(r"(\w+(?::\w+)?)=(\S*)", line):
                fields.setdefault(match.group(1), match.group(2))
            if fields.get("JobId", "").isdigit():
                found[int(fields["JobId"])] = fields
        return found

    def wait_for(
        self, job_id: int, states: Sequence[str], timeout: float, restarts: int | None = None
    ) -> dict[str, str]:
        """Wait until the job is in one of ``states`` (and restarted ``restarts`` times)."""
        deadline = time.monotonic() + timeout
        job: dict[str, str] = {}
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if job.get("JobState") in states and (
                restarts is None or int(job.get("Restarts", "0")) >= restarts
            ):
                return job
            time.sleep(0.2)
        raise AssertionError(
            f"job {job_id} did not reach {list(states)} (restarts {restarts}) in {timeout} s: "
            f"{job}\n{self.logs()}"
        )

    def cancel_all(self) -> None:
        """Cancel every job of the cluster (quietly)."""
        with contextlib.suppress(Exception):
            self.client("scancel", "--full", "--quiet", "-u", "root", check=False)
