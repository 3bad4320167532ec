"""``helios inspect``: what a checkpoint holds, read without the model's code.

A checkpoint is read with ``torch.load(weights_only=True)`` (memory-mapped: its tensors are
not read into memory), with the trainer's types and the names Helios 1.2.7 pickled them
under allowed, and nothing else: a type of the model's own must be allowed by name
(``--allow-type module.Class``). A sharded checkpoint (a ``.dcp`` folder) is read through its
``helios.pth``; the index of its shards (``.metadata``, a plain pickle) is not read, so the
sharded parts are listed by their shard files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import math
import os
import pathlib
import pickle
import re
import sys
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch

SHARDED_SUFFIX = ".dcp"
CONTENTS_NAME = "helios.pth"
SHARDED_PARTS_KEY = "sharded_parts"


class CheckpointReadError(RuntimeError):
    """A checkpoint that cannot be read (missing, truncated, not a checkpoint, unsafe)."""


@dataclasses.dataclass
class LoadedCheckpoint:
    """A checkpoint's contents and where they came from.

    Attributes:
        path: the checkpoint (file or ``.dcp`` folder).
        contents: the loaded dictionary (of ``helios.pth`` for a sharded checkpoint).
        sharded: whether it is a ``.dcp`` folder.
        files: the files of a sharded checkpoint with their sizes, or the file's size.
    """

    path: pathlib.Path
    contents: dict[str, Any]
    sharded: bool
    files: dict[str, int]


def _legacy_names() -> list[Any]:
    """Types under the names older helios versions and other platforms pickled them."""
    from helios.trainer.state import TrainingState

    foreign: type[pathlib.PurePath]
    if os.name == "nt":  # pragma: no cover - tested on Linux
        foreign, foreign_name = pathlib.PurePosixPath, "PosixPath"
    else:
        foreign, foreign_name = pathlib.PureWindowsPath, "WindowsPath"
    names: list[Any] = [(TrainingState, "helios.trainer.TrainingState")]
    for module in ("pathlib", "pathlib._local"):
        names.append((foreign, f"{module}.{foreign_name}"))
    return names


def _allowed_types(extra: Sequence[str]) -> list[Any]:
    from helios.trainer import get_trainer_safe_types_for_load

    allowed: list[Any] = [
        t for t in get_trainer_safe_types_for_load() if t.__name__ != f"{_foreign_path()}"
    ]
    allowed += _legacy_names()
    if extra and str(pathlib.Path.cwd()) not in sys.path:
        sys.path.insert(0, str(pathlib.Path.cwd()))  # as for a config's imports
    for name in extra:
        module_name, _, attribute = name.rpartition(".")
        try:
            allowed.append(getattr(importlib.import_module(module_name), attribute))
        except (ImportError, AttributeError, ValueError) as error:
            raise CheckpointReadError(
                f"--allow-type {name}: cannot import it ({error}); expected a dotted "
                "module.Class path"
            ) from error
    return allowed


def _foreign_path() -> str:
    return "PosixPath" if os.name == "nt" else "WindowsPath"


@contextlib.contextmanager
def _reading(path: pathlib.Path) -> Iterator[None]:
    try:
        yield
    except pickle.UnpicklingError as error:
        found = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", str(error))
        what = found.group(1) if found else _first_line(error)
        raise CheckpointReadError(
            f"{path} holds a type that is not allowed for safe loading ({what}). "
            "If you trust the file and the type is the model's own, allow it with --allow-type "
            "module.Class"
        ) from error
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as error:
        raise CheckpointReadError(
            f"{path} is not a readable checkpoint ({type(error).__name__}: "
            f"{_first_line(error)}): truncated, overwritten or not written by torch.save"
        ) from error


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _load_file(path: pathlib.Path, allowed: list[Any]) -> Any:
    if not path.is_file():
        raise CheckpointReadError(f"no checkpoint file at {path}")
    if not zipfile.is_zipfile(path):
        raise CheckpointReadError(
            f"{path} is not a readable checkpoint: not a torch.save archive "
            "(truncated, overwritten or another kind of file)"
        )
    with _reading(path), torch.serialization.safe_globals(allowed):
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def read_checkpoint(
    path: pathlib.Path, allow_types: Sequence[str] = (), extra_types: Sequence[type] = ()
) -> LoadedCheckpoint:
    """Load a checkpoint file or ``.dcp`` folder safely, without the model's code.

    Args:
        path: the checkpoint.
        allow_types: dotted ``module.Class`` names of further types the file may hold.
        extra_types: further types the file may hold.

    Returns:
        The contents.

    Raises:
        CheckpointReadError: naming the path and what is wrong.
    """
    path = pathlib.Path(path)
    allowed = [*_allowed_types(allow_types), *extra_types]
    if path.is_dir():
        if path.suffix != SHARDED_SUFFIX:
            raise CheckpointReadError(
                f"{path} is a folder but not a sharded checkpoint (a {SHARDED_SUFFIX} "
                "folder); name a checkpoint file or folder inside it"
            )
        contents = _load_file(path / CONTENTS_NAME, allowed)
        files = {p.name: p.stat().st_size for p in sorted(path.iterdir()) if p.is_file()}
        sharded = True
    else:
        if not path.exists():
            raise CheckpointReadError(f"no checkpoint at {path}")
        contents = _load_file(path, allowed)
        files = {path.name: path.stat().st_size}
        sharded = False
    if not isinstance(contents, dict):
        raise CheckpointReadError(
            f"{path} is not a helios checkpoint: it holds a {type(contents).__name__}, not a dict"
        )
    missing = [k for k in ("training_state", "model") if k not in contents]
    missing = [k for k in missing if k not in contents.get(SHARDED_PARTS_KEY, ())]
    if missing:
        raise CheckpointReadError(
            f"{path} is not a helios checkpoint: missing {missing}; keys present: "
            f"{sorted(map(str, contents))}"
        )
    return LoadedCheckpoint(path, contents, sharded, files)


# -- the summary -----------------------------------------------------------------------------


def _helios_keys() -> set[str]:
    """The keys helios keeps its own state under (every other key is a plug-in's or a part's)."""
    from helios.trainer.checkpoint.parts import RESERVED_NAMES

    return {*RESERVED_NAMES, SHARDED_PARTS_KEY}


def _tensors(value: Any, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(value, torch.Tensor):
        yield prefix, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _tensors(item, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _tensors(item, f"{prefix}.{index}" if prefix else str(index))


def _nbytes(value: Any) -> int:
    return sum(t.numel() * t.element_size() for _, t in _tensors(value))


def _is_module_state(value: Any) -> bool:
    return (
        isinstance(value, Mapping)
        and bool(value)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())
    )


def _is_optimizer_state(value: Any) -> bool:
    return isinstance(value, Mapping) and {"state", "param_groups"} <= set(value)


def _describe_model(model: Any, sharded: bool) -> dict[str, Any]:
    """Networks (their tensors), optimizers and other entries of the model's state."""
    if sharded:
        return {"sharded": True}
    if not isinstance(model, Mapping):
        return {"other": {"": type(model).__name__}}
    networks: dict[str, Any] = {}
    optimizers: dict[str, Any] = {}
    other: dict[str, Any] = {}
    for key, value in model.items():
        name = str(key)
        if _is_module_state(value):
            networks[name] = {
                tensor: {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
                for tensor, t in value.items()
            }
        elif _is_optimizer_state(value):
            optimizers[name] = _describe_optimizer(value)
        elif isinstance(value, list | tuple) and value and all(map(_is_optimizer_state, value)):
            for index, entry in enumerate(value):  # a list of optimizers (pyblaze)
                optimizers[f"{name}.{index}"] = _describe_optimizer(entry)
        else:
            other[name] = _plain(value) if _small(value) else f"{type(value).__name__}"
    return {"networks": networks, "optimizers": optimizers, "other": other}


def _describe_optimizer(value: Mapping[str, Any]) -> dict[str, Any]:
    groups = value["param_groups"]
    return {
        "param_groups": len(groups),
        "parameters": sum(len(g.get("params", ())) for g in groups),
        "state_tensors": sum(1 for _ in _tensors(value["state"])),
        "hyperparameters": [{k: _plain(v) for k, v in g.items() if k != "params"} for g in groups],
    }


def _small(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.numel() <= 8
    if isinstance(value, Mapping):
        return len(value) <= 32 and all(_small(v) for v in value.values())
    if isinstance(value, list | tuple):
        return len(value) <= 32 and all(_small(v) for v in value)
    return True


def _plain(value: Any) -> Any:
    """A JSON-able copy of a small value."""
    if isinstance(value, torch.Tensor):
        return value.tolist() if value.numel() <= 8 else f"tensor{list(value.shape)}"
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, pathlib.PurePath):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return repr(value)


def summarize(loaded: LoadedCheckpoint) -> dict[str, Any]:
    """Describe a checkpoint as a JSON-able dictionary (what ``inspect --json`` prints).

    Args:
        loaded: the checkpoint.

    Returns:
        The description.
    """
    contents = loaded.contents
    state = contents.get("training_state")
    position = _plain(state) if state is not None else {}
    ranks = contents.get("ranks")
    world_size: Any = None
    if isinstance(ranks, list) and ranks:
        sampler = ranks[0].get("sampler", {}) if isinstance(ranks[0], Mapping) else {}
        world_size = sampler.get("world_size", len(ranks))
    sharded_parts = list(contents.get(SHARDED_PARTS_KEY, ()))
    parts = {}
    for key, value in contents.items():
        if key in ("version", SHARDED_PARTS_KEY):
            continue
        tensors = list(_tensors(value))
        parts[str(key)] = {
            "tensors": len(tensors),
            "tensor_bytes": sum(t.numel() * t.element_size() for _, t in tensors),
        }
    for key in sharded_parts:
        parts[str(key)] = {"sharded": True}
    config = contents.get("config")
    precision = contents.get("precision")
    retention = contents.get("checkpoint_retention")
    metrics: dict[str, Any] = {}
    model = contents.get("model")
    if isinstance(model, Mapping) and isinstance(model.get("metrics"), Mapping):
        metrics = _plain(model["metrics"])
    layout = "helios 1.x (no per-rank entries)" if ranks is None else "current"
    helios_keys = _helios_keys()
    summary: dict[str, Any] = {
        "path": str(loaded.path),
        "kind": "sharded folder" if loaded.sharded else "file",
        "files": loaded.files,
        "size_bytes": sum(loaded.files.values()),
        "written_by": str(contents.get("version", "unknown (older than Helios 1.0)")),
        "layout": layout,
        "position": position,
        "world_size": world_size if world_size is not None else 1,
        "precision": _plain(precision.get("name")) if isinstance(precision, Mapping) else "32",
        "grad_scaler": bool(precision.get("scaler")) if isinstance(precision, Mapping) else False,
        "parts": parts,
        "sharded_parts": sharded_parts,
        "model": _describe_model(model, "model" in sharded_parts),
        "metrics": metrics,
        "retention": _plain(retention) if retention is not None else None,
        "loggers": [
            {k: _plain(v) for k, v in entry.items() if k in ("backend", "run_id", "last_step")}
            for entry in contents.get("loggers") or []
            if isinstance(entry, Mapping)
        ],
        "run_end": _plain(contents.get("run_end")),
        "preemption": _plain(contents.get("preemption")),
        "plugins": sorted(str(k) for k in contents if k not in helios_keys and k != "config"),
        "config": _plain(config.get("config")) if isinstance(config, Mapping) else None,
        "config_changes": _plain(config.get("changes", [])) if isinstance(config, Mapping) else [],
        "environment": _plain(contents.get("environment")),
    }
    return summary


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"  # pragma: no cover


def format_summary(summary: Mapping[str, Any]) -> str:
    """The text ``helios inspect`` prints for a summary."""
    lines = [f"checkpoint: {summary['path']} ({summary['kind']}, {_size(summary['size_bytes'])})"]
    if summary["kind"] == "sharded folder":
        for name, size in summary["files"].items():
            lines.append(f"  {name}: {_size(size)}")
    lines.append(f"written by: helios {summary['written_by']} (layout: {summary['layout']})")
    pos = summary["position"]
    if pos:
        lines.append(
            f"position: epoch {pos.get('global_epoch')}, iteration "
            f"{pos.get('current_iteration')} (batches {pos.get('global_iteration')}, "
            f"{pos.get('dataset_iter')} into the epoch, {pos.get('validation_cycles')} "
            "validation cycles)"
        )
    config = summary.get("config")
    trainer = (config or {}).get("trainer", {})
    if "train_unit" in trainer:
        lines.append(f"unit: {trainer['train_unit']}, total_steps: {trainer.get('total_steps')}")
    lines.append(f"world size: {summary['world_size']}")
    scaler = " with a gradient scaler" if summary["grad_scaler"] else ""
    lines.append(f"precision: {summary['precision']}{scaler}")
    lines.append("parts:")
    for key, part in summary["parts"].items():
        if part.get("sharded"):
            lines.append(f"  {key}: sharded (in the shard files)")
        elif part["tensors"]:
            lines.append(f"  {key}: {part['tensors']} tensors, {_size(part['tensor_bytes'])}")
        else:
            lines.append(f"  {key}: no tensors")
    model = summary["model"]
    for name, tensors in model.get("networks", {}).items():
        lines.append(f"network {name}:")
        for tensor, info in tensors.items():
            lines.append(f"  {tensor}: {tuple(info['shape'])} {info['dtype']}")
    for name, info in model.get("optimizers", {}).items():
        lines.append(
            f"optimizer {name}: {info['param_groups']} param group(s), {info['parameters']} "
            f"parameters, {info['state_tensors']} state tensors"
        )
        for group in info["hyperparameters"]:
            shown = ", ".join(f"{k}={v}" for k, v in group.items())
            lines.append(f"  {shown}")
    for name, value in model.get("other", {}).items():
        if name != "metrics":
            shown = str(value)
            lines.append(f"model entry {name}: {shown[:200]}{'...' if len(shown) > 200 else ''}")
    if summary["metrics"]:
        lines.append(f"metrics: {summary['metrics']}")
    retention = summary.get("retention")
    if retention:
        lines.append(
            f"retention: best by {retention.get('best_metric')} ({retention.get('best_mode')})"
        )
        for entry in retention.get("entries", []):
            lines.append(f"  {entry}")
    for entry in summary["loggers"]:
        lines.append(
            f"logger {entry.get('backend')}: run id {entry.get('run_id')}, last step "
            f"{entry.get('last_step')}"
        )
    if summary["run_end"]:
        lines.append(f"run ended: {summary['run_end']}")
    if summary["preemption"]:
        lines.append(f"written for a signal: {summary['preemption']}")
    if summary["plugins"]:
        lines.append(f"plug-ins: {', '.join(summary['plugins'])}")
    env = summary.get("environment")
    if env:
        shown = ", ".join(f"{k} {v}" for k, v in env.items() if k != "earlier")
        lines.append(f"environment: {shown}")
        for earlier in env.get("earlier", []):
            lines.append(f"  earlier: {', '.join(f'{k} {v}' for k, v in earlier.items())}")
    else:
        lines.append("environment: not recorded (written by an older helios)")
    if config:
        from .config import dump_config

        lines.append("config:")
        lines += ["  " + line for line in dump_config(config).rstrip().splitlines()]
        for changes in summary.get("config_changes", []):
            changed = ", ".join(f"{k}: {v[0]!r} -> {v[1]!r}" for k, v in changes.items())
            lines.append(f"  resumed with changes: {changed}")
    else:
        lines.append("config: not recorded (not started by the helios command)")
    return "\n".join(lines) + "\n"


__all__ = [
    "CheckpointReadError",
    "LoadedCheckpoint",
    "format_summary",
    "read_checkpoint",
    "summarize",
]
