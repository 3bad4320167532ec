"""What a run started by the ``helios`` command records in every checkpoint: its config.

The ``config`` part (:py:class:`ConfigRecord`) is the resolved config of the run, added with
:py:meth:`helios.trainer.Trainer.add_checkpoint_part`. On resume the new config is compared
with the saved one; the keys that changed are listed, and a change that could make the
resumed run differ from an uninterrupted one is refused unless the user allows it by name
(``--allow-change trainer.total_steps``). Raising ``trainer.total_steps`` is always allowed,
and so are keys that cannot change what is trained (:py:data:`HARMLESS_KEYS`).

The environment a checkpoint was written in is not the command's: the trainer records it in
every checkpoint (:py:mod:`helios.trainer.checkpoint.environment`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

CONFIG_PART = "config"
"""The key of the resolved config in a checkpoint."""

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
        f"the config differs from the one saved in {path} in keys that can change "
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


__all__ = [
    "CONFIG_PART",
    "HARMLESS_KEYS",
    "ConfigChangedError",
    "ConfigRecord",
    "config_changes",
    "describe_changes",
    "flatten",
    "refusal_message",
    "refused_changes",
]
