"""Fixtures of the cluster tests: simulated hosts, a SLURM cluster, a PostgreSQL server.

Each fixture starts its service from nothing in a temp folder and tears it down afterwards,
also when a test fails or times out (``finally``). Where the machine lacks what a service
needs (root, the Debian packages that ``.ci/system-deps.sh`` installs), the tests that use it
are skipped with the reason, except under CI (``CI`` set), where that is an error.

The helper modules (``sim_hosts``, ``slurm_cluster``, ``pg_server``, ``cluster_docs``) are
registered here under their file names, as the test folders are not packages.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import shutil
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

HERE = pathlib.Path(__file__).parent


def _register(name: str) -> Any:
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


sim_hosts = _register("sim_hosts")
slurm_cluster = _register("slurm_cluster")
pg_server = _register("pg_server")
cluster_docs = _register("cluster_docs")


def _require(reason: str | None) -> None:
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the cluster tests, but this machine {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Two simulated hosts (network namespaces) for the tests of a module."""
    _require(sim_hosts.available())
    cluster = sim_hosts.SimHosts(2, tmp_path_factory.mktemp("hosts"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A one-node SLURM cluster for the tests of a module."""
    _require(slurm_cluster.available())
    cluster = slurm_cluster.SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def postgres(hosts: Any) -> Iterator[Any]:
    """A PostgreSQL server reachable from the simulated hosts (on the bridge's address)."""
    _require(pg_server.available())
    # A folder of its own under /tmp: the server's account must reach it, and pytest's
    # temp folders are private to root.
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="helios-pg-"))
    server = pg_server.PostgresServer(workdir, listen=[hosts.root_address])
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
