"""Make ``import stream_job`` work: the job script is also a library for the tests."""

from __future__ import annotations

import importlib.util
import pathlib
import sys
from collections.abc import Iterator

import pytest
import torch


def _register_stream_job() -> None:
    if "stream_job" in sys.modules:
        return
    path = pathlib.Path(__file__).with_name("stream_job.py")
    spec = importlib.util.spec_from_file_location("stream_job", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["stream_job"] = module
    spec.loader.exec_module(module)


_register_stream_job()


@pytest.fixture(scope="module", autouse=True)
def _keep_deterministic_mode() -> Iterator[None]:
    """The Trainer switches torch's deterministic mode on; switch it back afterwards."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
