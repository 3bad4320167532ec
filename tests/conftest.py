"""Fixtures shared by the whole suite.

The toys they hand out live in ``toys.py`` (helios) and ``pyblaze_toys.py`` (pyblaze) beside
this file, which tests and job scripts also import directly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch


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
