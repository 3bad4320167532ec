"""The environment part: what software and device wrote each checkpoint (key ``environment``).

Every checkpoint of a fit records the helios, torch and Python versions, the platform and
the device kind it was written in: a reproducibility record that ``helios inspect`` shows
without a model. When a run resumes in another environment (a newer torch, another GPU),
the environments of its earlier segments are kept under ``earlier``. The part never
changes what is trained; a checkpoint written before the part existed has no entry and
resumes as before.
"""

from __future__ import annotations

import platform
from collections.abc import Mapping
from typing import Any

import torch

from .parts import CheckpointPart


def describe_environment(device: torch.device | None = None) -> dict[str, str]:
    """Describe the software and the device a run executes on.

    Args:
        device: the run's device (``None``: the CPU).

    Returns:
        ``helios``, ``torch``, ``python``, ``platform`` and ``device`` (``"cpu"``, or
        ``"cuda: <the GPU's name>"``), and the ``cuda`` and ``cudnn`` versions on a GPU.
        Every value is a plain string, so safe loading reads it back.
    """
    import helios

    record = {
        "helios": str(helios.__version__),
        "torch": str(torch.__version__),  # a TorchVersion otherwise, which safe loads refuse
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": "cpu",
    }
    if device is not None and device.type == "cuda":
        record["device"] = f"cuda: {torch.cuda.get_device_name(device)}"
        record["cuda"] = str(torch.version.cuda)
        record["cudnn"] = str(torch.backends.cudnn.version())
    elif device is not None and device.type != "cpu":
        record["device"] = device.type
    return record


class EnvironmentPart(CheckpointPart):
    """The environment a checkpoint was written in, and those of earlier run segments.

    Args:
        device: the run's device.
    """

    name = "environment"

    def __init__(self, device: torch.device | None = None) -> None:
        self._device = device
        self._current: dict[str, str] | None = None
        self.earlier: list[dict[str, Any]] = []
        """The other environments earlier segments of the run were written in, oldest first."""

    @property
    def current(self) -> dict[str, str]:
        """This process's environment (described once)."""
        if self._current is None:
            self._current = describe_environment(self._device)
        return self._current

    def state_dict(self) -> dict[str, Any]:
        """Return this environment, with ``earlier`` listing the run's other ones."""
        return {**self.current, "earlier": [dict(e) for e in self.earlier]}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Keep the saved environment in ``earlier`` when it differs from this one.

        Args:
            state_dict: a saved entry; anything else than a mapping (a damaged or foreign
                entry) is ignored, as the record cannot change what is trained.
        """
        if not isinstance(state_dict, Mapping):
            return
        saved = state_dict.get("earlier", [])
        earlier = (
            [dict(e) for e in saved if isinstance(e, Mapping)] if isinstance(saved, list) else []
        )
        previous = {k: v for k, v in state_dict.items() if k != "earlier"}
        if previous and previous != self.current and previous not in earlier:
            earlier.append(previous)
        self.earlier = earlier


__all__ = ["EnvironmentPart", "describe_environment"]
