"""Fixtures shared by the whole suite.

The toys they hand out live in ``toys.py`` (helios) and ``pyblaze_toys.py`` (pyblaze) beside
this file, which tests and job scripts also import directly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Make ``--dist loadgroup`` keep each ``xdist_group`` on one worker under pytest 9.2.

    pytest-xdist (3.8) tells the scheduler a test's group by appending ``@<group>`` to its
    node id, through the attribute that held the id before pytest 9.2; pytest 9.2 keeps the
    id elsewhere, so the groups are silently ignored (pytest-xdist issue #1386). Here, after
    xdist's own hook, a grouped test whose id still lacks the suffix gets it the same way.
    """
    if not getattr(config.option, "loadgroup", False):
        return
    for item in items:
        names = sorted(
            {
                str(m.args[0] if m.args else m.kwargs.get("name", "default"))
                for m in item.iter_markers("xdist_group")
            }
        )
        if names and "@" not in item.nodeid.rsplit("]", 1)[-1]:
            from _pytest.nodeid import NodeId  # only reached on pytest >= 9.2

            item._id = NodeId.parse(f"{item.nodeid}@{'_'.join(names)}")


@pytest.fixture
def keep_deterministic_mode() -> Iterator[None]:
    """Restore torch's deterministic mode after the test (the Trainer switches it on)."""
    enabled = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(enabled)


@pytest.fixture
def make_model() -> Callable[..., Any]:
    """Build a pyblaze ``LinearEstimator(4, 3)`` after ``torch.manual_seed(seed)``."""
    from pyblaze_toys import LinearEstimator

    def factory(seed: int = 0) -> LinearEstimator:
        torch.manual_seed(seed)
        return LinearEstimator()

    return factory


@pytest.fixture
def dataset() -> Any:
    """30 points of ``pyblaze_toys.three_classes``, for ``make_model``'s estimator."""
    from pyblaze_toys import three_classes

    return three_classes(30)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[Any]:
    """moto's S3 server on localhost for the whole session (stopped after, also on failure)."""
    pytest.importorskip("s3fs", reason="the object store tests need the dev extra (s3fs)")
    from s3_server import S3Server

    server = S3Server()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3_server: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Point S3 clients at the test server through the AWS environment variables."""
    from s3_server import forget_clients

    for name, value in s3_server.environment().items():
        monkeypatch.setenv(name, value)
    forget_clients()
    yield s3_server
    forget_clients()


@pytest.fixture
def s3_bucket(s3_env: Any, request: pytest.FixtureRequest) -> str:
    """A fresh bucket on the test server (the environment points at it); its URL."""
    return f"s3://{s3_env.new_bucket(request.node.name)}"
