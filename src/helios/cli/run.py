"""``helios fit`` and ``helios test``: build a run from a resolved config and run it.

Everything is built (model, data module, plug-ins, loggers, Trainer) and checked before
anything trains; a constructor that refuses its arguments is reported as a
:py:class:`~helios.cli.config.ConfigError` naming the config section. Before ``fit``, the
config is compared with the one saved in the newest checkpoint of the run
(:py:mod:`helios.cli.records`).
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from . import records
from .config import Checked, ConfigError, ResolvedConfig

if TYPE_CHECKING:
    from helios.data import DataModule
    from helios.model import Model
    from helios.plugins import Plugin
    from helios.trainer import Trainer


@dataclasses.dataclass
class Run:
    """The objects of a run built from a config.

    Attributes:
        model: the model.
        datamodule: the data module.
        trainer: the trainer (plug-ins registered).
        plugins: the config's plug-ins.
        chkpt_root: the trainer's checkpoint root (``None``: no checkpoints).
    """

    model: Model
    datamodule: DataModule
    trainer: Trainer
    plugins: list[Plugin]
    chkpt_root: pathlib.Path | None


def _build(checked: Checked, key: str) -> Any:
    try:
        return checked.target(**checked.kwargs)
    except (TypeError, ValueError, KeyError, RuntimeError, ImportError) as error:
        raise ConfigError(
            key, f"{checked.target.__qualname__}(...) refused its arguments: {error}"
        ) from error


def build_run(config: ResolvedConfig, extra_plugins: Sequence[Plugin] = ()) -> Run:
    """Build every object of a run, in the order the Trainer needs them.

    Args:
        config: the resolved config.
        extra_plugins: plug-ins the command adds (after the config's).

    Returns:
        The run.

    Raises:
        ConfigError: if a constructor refuses its arguments, naming the section.
    """
    import torch

    from helios.trainer import Trainer

    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    loggers = [_build(entry, f"loggers.{i}") for i, entry in enumerate(config.loggers)]
    try:
        trainer = Trainer(**config.trainer, loggers=loggers or None)
    except (TypeError, ValueError, RuntimeError) as error:
        message = str(error)
        named = re.match(r"\w+", message)
        key = f"trainer.{named.group()}" if named and named.group() in config.trainer else "trainer"
        raise ConfigError(key, message) from error
    model = _build(config.model, "model")
    datamodule = _build(config.datamodule, "datamodule")
    plugins = [_build(entry, f"plugins.{i}") for i, entry in enumerate(config.plugins)]
    for index, plugin in enumerate([*plugins, *extra_plugins]):
        try:
            plugin.configure_trainer(trainer)
            plugin.configure_model(model)
        except (KeyError, ValueError, TypeError) as error:
            raise ConfigError(f"plugins.{index}", str(error)) from error
    root = config.trainer.get("chkpt_root")
    return Run(model, datamodule, trainer, plugins, pathlib.Path(root) if root else None)


def saved_config(run: Run) -> tuple[pathlib.Path, dict[str, Any]] | None:
    """Read the config saved in the newest checkpoint of the run, if there is one.

    Only the config part is read (the file is memory-mapped, its tensors are not loaded).
    A checkpoint that cannot be read is left to the trainer, which skips it with a warning.

    Returns:
        The checkpoint path and the saved config record, or ``None``.
    """
    from helios.model.model import register_model_types_for_safe_load
    from helios.trainer import find_last_checkpoint

    from .inspection import CheckpointReadError, read_checkpoint

    if run.chkpt_root is None:
        return None
    newest = find_last_checkpoint(run.chkpt_root / run.model.save_name)
    if newest is None:
        return None
    try:
        register_model_types_for_safe_load(run.model)
        contents = read_checkpoint(newest).contents
    except CheckpointReadError:
        return None
    record = contents.get(records.CONFIG_PART)
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        return None
    return newest, record


def check_resume(run: Run, config: ResolvedConfig, allowed: Sequence[str]) -> list[str]:
    """Compare the config with the one saved in the newest checkpoint; list the changes.

    Returns:
        One line per changed key (empty when nothing changed or nothing was saved).

    Raises:
        ConfigError: if a change is refused (see :py:func:`helios.cli.records.refused_changes`).
    """
    found = saved_config(run)
    if found is None:
        return []
    path, record = found
    changes = records.config_changes(record["config"], config.data)
    refused = records.refused_changes(changes, allowed)
    if refused:
        raise ConfigError("", records.refusal_message(path, refused))
    return [f"{key}: {old!r} -> {new!r}" for key, (old, new) in changes.items()]


def _is_main_process() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


def fit(
    config: ResolvedConfig, allowed: Sequence[str] = (), extra_plugins: Sequence[Plugin] = ()
) -> int:
    """Train the run a config describes (resuming from its newest checkpoint).

    Args:
        config: the resolved config.
        allowed: config keys allowed to differ from the saved config.
        extra_plugins: plug-ins the command adds.

    Returns:
        The exit status: 0 when training finished, 1 when it failed.

    Raises:
        ConfigError: for a config that cannot run or a refused change.
    """
    run = build_run(config, extra_plugins)
    taken = run.trainer.plugins.get(records.CONFIG_PART)
    if taken is not None:
        raise ConfigError(
            "plugins",
            f"the plug-in {type(taken).__name__} has the id {records.CONFIG_PART!r}, the key "
            "the helios command saves the run's config under: give the plug-in another id",
        )
    changes = check_resume(run, config, allowed)
    if changes and _is_main_process():
        print("Resuming with a changed config:\n  " + "\n  ".join(changes), file=sys.stderr)
    run.trainer.add_checkpoint_part(records.CONFIG_PART, records.ConfigRecord(config.data, allowed))
    return 0 if run.trainer.fit(run.model, run.datamodule) else 1


def test(config: ResolvedConfig) -> int:
    """Test the model of a run (from its newest checkpoint, else ``load_for_testing``).

    Returns:
        The exit status: 0 when testing ran, 1 when it failed.
    """
    run = build_run(config)
    return 0 if run.trainer.test(run.model, run.datamodule) else 1


__all__ = ["Run", "build_run", "check_resume", "fit", "saved_config", "test"]
