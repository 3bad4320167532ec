"""Shared pieces of the trainer tests."""

from __future__ import annotations

import importlib.util
import pathlib
import sys
from collections.abc import Iterator

import pytest
import torch

RESUME_JOB_PATH = pathlib.Path(__file__).with_name("resume_job.py")


def _register_resume_job() -> None:
    """Make ``import resume_job`` work: the job script is also a library for the tests."""
    if "resume_job" in sys.modules:
        return
    spec = importlib.util.spec_from_file_location("resume_job", RESUME_JOB_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["resume_job"] = module
    spec.loader.exec_module(module)


_register_resume_job()


@pytest.fixture(scope="module", autouse=True)
def _keep_deterministic_mode() -> Iterator[None]:
    """The Trainer switches torch's deterministic mode on; switch it back afterwards."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
