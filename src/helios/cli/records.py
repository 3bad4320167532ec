"""What a run started by the ``helios`` command records in every checkpoint.

Two named checkpoint parts:

* ``config`` (:py:class:`ConfigRecord`): the resolved config of the run. On resume the new
  config is compared with the saved one; the keys that changed are listed, and a change
  that could make the resumed run differ from an uninterrupted one is refused unless the
  user allows it by name (``--allow-change trainer.total_steps``). Raising
  ``trainer.total_steps`` is always allowed, and so are keys that cannot change what is
  trained (:py:data:`HARMLESS_KEYS`).
* ``environment`` (:py:class:`EnvironmentRecord`): the helios, torch and Python versions,
  the platform and the device kind the checkpoint was written in, and the distinct
  environments of earlier segments of the run.

They are attached to a trainer by :py:func:`attach_parts`, the one place that knows how a
front end adds a named part to the trainer's checkpoints (today: a plug-in whose state is
the part's; a plug-in's state is saved in every checkpoint under its id).
"""

from __future__ import annotations

import math
import platform
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import torch

from helios.plugins import Plugin

if TYPE_CHECKING:
    from helios.trainer import Trainer

CONFIG_PART = "config"
"""The key of the resolved config in a checkpoint."""

ENVIRONMENT_PART = "environment"
"""The key of the environment record in a checkpoint."""

HARMLESS_KEYS = (
    "trainer.print_banner",
    "trainer.enable_progress_bar",
    "trainer.print_summaries",
    "trainer.capture_warnings",
    "trainer.enable_tensorboard",
    "trainer.enable_file_logging",
    "trainer.log_path",
    "trainer.run_path",
    "trainer.chkpt_root",
    "trainer.chkpt_frequency",
    "trainer.chkpt_async",
    "trainer.chkpt_keep_last",
    "trainer.chkpt_keep_best",
    "trainer.chkpt_best_metric",
    "trainer.chkpt_best_mode",
    "loggers",
)
"""Keys whose change cannot make a resumed run train differently (listed, not refused)."""


class RunPart(Protocol):
    """A named part of every checkpoint (the trainer's part protocol)."""

    def state_dict(self) -> Any:
        """Return the state to save."""

    def load_state_dict(self, state_dict: Any) -> None:
        """Restore a saved state."""


class _PartPlugin(Plugin):
    """Carries a part into the checkpoints as a plug-in with the part's name as its id."""

    def __init__(self, name: str, part: RunPart) -> None:
        super().__init__(name)
        self._part = part

    def configure_trainer(self, trainer: Trainer) -> None:
        self._register_in_trainer(trainer)

    def setup(self) -> None:
        bind = getattr(self._part, "bind", None)
        if bind is not None:
            bind(self.device)

    def state_dict(self) -> Any:
        return self._part.state_dict()

    def load_state_dict(self, state_dict: Any) -> None:
        self._part.load_state_dict(state_dict)


def attach_parts(trainer: Trainer, parts: Mapping[str, RunPart]) -> None:
    """Add named parts to every checkpoint the trainer writes, restored when it resumes.

    Args:
        trainer: the trainer.
        parts: the parts by checkpoint key.

    Raises:
        KeyError: if a plug-in of the trainer already uses one of the names.
    """
    for name, part in parts.items():
        _PartPlugin(name, part).configure_trainer(trainer)


# -- the resolved config ---------------------------------------------------------------------


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Return the leaves of a nested config by dotted key (list entries by index)."""
    if isinstance(value, Mapping) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, list | tuple) and value:
        out = {}
        for index, item in enumerate(value):
            out.update(flatten(item, f"{prefix}.{index}" if prefix else str(index)))
        return out
    return {prefix: value}


_ABSENT = "<absent>"


def config_changes(saved: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, Any]:
    """Return the keys whose values differ between two configs: ``{key: [saved, now]}``.

    A key present in one config only is shown as ``"<absent>"`` in the other.
    """
    before, after = flatten(saved), flatten(current)
    changes: dict[str, Any] = {}
    for key in sorted({*before, *after}):
        old, new = before.get(key, _ABSENT), after.get(key, _ABSENT)
        if not _same(old, new):
            changes[key] = [old, new]
    return changes


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return (type(a) is type(b) and a == b) or (_number(a) and _number(b) and a == b)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _covered(key: str, names: Sequence[str]) -> bool:
    return any(key == name or key.startswith(name + ".") for name in names)


def refused_changes(changes: Mapping[str, Any], allowed: Sequence[str]) -> dict[str, Any]:
    """Return the changes that could make the resume inexact and were not allowed by name.

    Args:
        changes: from :py:func:`config_changes`.
        allowed: keys (or key prefixes) the user allows to change.

    Returns:
        The refused changes.
    """
    refused: dict[str, Any] = {}
    for key, (old, new) in changes.items():
        if _covered(key, allowed) or _covered(key, HARMLESS_KEYS):
            continue
        if key == "trainer.total_steps" and _number(old) and _number(new) and new >= old:
            continue
        refused[key] = [old, new]
    return refused


def describe_changes(changes: Mapping[str, Any]) -> str:
    """One line per changed key: ``key: old -> new``."""
    return "\n".join(f"  {key}: {old!r} -> {new!r}" for key, (old, new) in changes.items())


class ConfigChangedError(RuntimeError):
    """A run resumed with a config that changed in a way not allowed by name."""


def refusal_message(path: Any, refused: Mapping[str, Any]) -> str:
    """The message that refuses a resume, naming each refused key and how to allow it."""
    flags = " ".join(f"--allow-change {key}" for key in refused)
    return (
        f"error: the config differs from the one saved in {path} in keys that can change "
        f"what is trained, so the resumed run would not continue the same run:\n"
        f"{describe_changes(refused)}\n"
        f"Run with the saved values, allow the changes by name ({flags}), or start a new "
        "run in another chkpt_root"
    )


class ConfigRecord:
    """The resolved config of a run, a part of each checkpoint, compared on resume.

    Args:
        config: the resolved config (plain values).
        allowed: keys (or prefixes) allowed to differ from the saved config.
    """

    def __init__(self, config: Mapping[str, Any], allowed: Sequence[str] = ()) -> None:
        self.config = dict(config)
        self.allowed = list(allowed)
        self.history: list[dict[str, Any]] = []

    def state_dict(self) -> dict[str, Any]:
        """Return the config and the changes accepted at earlier resumes."""
        return {"config": self.config, "changes": list(self.history)}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Compare the saved config with this run's; keep the record of accepted changes.

        Raises:
            ConfigChangedError: if a key changed that may not change (see
                :py:func:`refused_changes`).
        """
        saved = state_dict.get("config", {})
        changes = config_changes(saved, self.config)
        refused = refused_changes(changes, self.allowed)
        if refused:
            raise ConfigChangedError(refusal_message("the checkpoint", refused))
        self.history = list(state_dict.get("changes", []))
        if changes:
            self.history.append(changes)


# -- the environment -------------------------------------------------------------------------


def environment(device: torch.device | None = None) -> dict[str, Any]:
    """Describe the software and the device a run executes on.

    Args:
        device: the run's device (``None``: the CPU).

    Returns:
        ``helios``, ``torch``, ``python``, ``platform``, ``device`` (``"cpu"`` or the GPU's
        name), and ``cuda``/``cudnn`` versions on a GPU.
    """
    import helios

    record: dict[str, Any] = {
        "helios": str(helios.__version__),
        "torch": str(torch.__version__),  # a TorchVersion, which safe loading refuses
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


class EnvironmentRecord:
    """The environment each checkpoint was written in, and those of earlier segments."""

    def __init__(self) -> None:
        self._device: torch.device | None = None
        self.earlier: list[dict[str, Any]] = []

    def bind(self, device: torch.device) -> None:
        """Note the run's device (called when the run is set up)."""
        self._device = device

    def state_dict(self) -> dict[str, Any]:
        """Return this environment, with ``earlier`` listing the other ones of the run."""
        return {**environment(self._device), "earlier": list(self.earlier)}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Keep the saved environment in ``earlier`` when it differs from this one."""
        earlier = [dict(e) for e in state_dict.get("earlier", [])]
        previous = {k: v for k, v in state_dict.items() if k != "earlier"}
        if previous and previous != environment(self._device) and previous not in earlier:
            earlier.append(previous)
        self.earlier = earlier


def run_parts(config: Mapping[str, Any], allowed: Sequence[str]) -> dict[str, RunPart]:
    """The parts a run of the ``helios`` command adds to its checkpoints, by key."""
    return {CONFIG_PART: ConfigRecord(config, allowed), ENVIRONMENT_PART: EnvironmentRecord()}


__all__ = [
    "CONFIG_PART",
    "ENVIRONMENT_PART",
    "HARMLESS_KEYS",
    "ConfigChangedError",
    "ConfigRecord",
    "EnvironmentRecord",
    "RunPart",
    "attach_parts",
    "config_changes",
    "describe_changes",
    "environment",
    "flatten",
    "refusal_message",
    "refused_changes",
    "run_parts",
]
