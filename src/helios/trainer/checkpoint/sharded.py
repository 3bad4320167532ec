"""Checkpoints of sharded models: a folder of Distributed Checkpoint shards plus the rest.

A checkpoint whose model holds ``DTensor`` shards (:py:meth:`helios.model.Model.shard_network`)
is a folder named like a checkpoint file but ending in ``.dcp``::

    <save_name>_epoch_<e>_iter_<i>.dcp/
        .metadata            Distributed Checkpoint's index of the shards (rank 0)
        __<rank>_0.distcp    the shards each rank wrote
        helios.pth           every other part, as in a one-file checkpoint (rank 0)

The sharded parts (the model's networks and optimizers) go through
``torch.distributed.checkpoint``; ``helios.pth`` holds the training state, every rank's RNG
and sampler position, plug-ins, loggers and retention record, and lists the sharded parts
under ``sharded_parts``.

Atomic at the level of the whole checkpoint: everything is written into a hidden temporary
folder (``.<name>.dcp.tmp``), synced, and the folder is renamed to its final name once every
rank has written and rank 0 has added ``helios.pth``. A crash at any moment leaves the
previous checkpoint the newest complete one; the trainer removes the temporary folder when
the run starts again.

Loading works on any number of processes, with or without a process group: Distributed
Checkpoint reshards every tensor to the shards of the loading run
(:py:func:`load_sharded_part`). :py:func:`export_full_checkpoint` turns a sharded checkpoint
into a one-file checkpoint of full tensors, for inference or ONNX export.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import pathlib
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from helios.core.utils import safe_torch_load

from .io import (
    read_metadata,
    read_sharded_contents,
    register_trainer_types_for_safe_load,
    save_atomically,
)
from .layout import CHECKPOINT_SUFFIX, SHARDED_PARTS_KEY, SHARDED_SUFFIX, is_sharded_checkpoint
from .layout import temporary_folder as _temporary_folder
from .parts import CheckpointPart
from .shard_index import shard_reader


def write_shards(states: Mapping[str, Any], path: pathlib.Path) -> None:
    """Write the sharded parts' states into the temporary folder of ``path`` (every rank).

    Args:
        states: the states by part key (each rank passes its own shards).
        path: the final path of the checkpoint folder.
    """
    import torch.distributed.checkpoint as dcp

    with _first_failure():
        dcp.save(
            dict(states),
            storage_writer=dcp.FileSystemWriter(_temporary_folder(path), sync_files=True),
        )


@contextlib.contextmanager
def _first_failure() -> Iterator[None]:
    """Raise the first rank's own error instead of Distributed Checkpoint's wrapper.

    ``CheckpointException`` derives from ``BaseException`` (an ``except Exception`` misses
    it) and names its failures only in a traceback dump.
    """
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        yield
    except CheckpointException as error:
        for _, (failure, _trace) in sorted(error.failures.items()):
            if isinstance(failure, Exception):
                raise failure from error
        raise RuntimeError(str(error)) from error


def _safe_load_planner() -> Any:
    """A load planner that unpickles the checkpoint's objects with ``weights_only=True``."""
    from torch.distributed.checkpoint import DefaultLoadPlanner

    class SafeLoadPlanner(DefaultLoadPlanner):
        def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
            checked = io.BytesIO()
            torch.save(safe_torch_load(value), checked)
            checked.seek(0)
            super().load_bytes(read_item, checked)

    return SafeLoadPlanner()


def _has_process_group() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _load(state_dict: dict[str, Any], path: pathlib.Path, single_process: bool) -> None:
    """Fill ``state_dict`` in place from the shards in ``path``."""
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        # Loading on one process is what we ask for, not an assumption to warn about.
        warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
        with _first_failure():
            dcp.load(
                state_dict,
                storage_reader=shard_reader(path),
                planner=_safe_load_planner(),
                no_dist=single_process,
            )


def _flat_keys(state_dict: dict[str, Any], metadata: Any) -> set[str]:
    """The keys Distributed Checkpoint gives the leaves of a state dict."""
    from torch.distributed.checkpoint import DefaultLoadPlanner

    planner = DefaultLoadPlanner()
    planner.set_up_planner(state_dict, metadata, False)
    return set(planner.state_dict)


def load_sharded_part(path: pathlib.Path, key: str, part: CheckpointPart) -> None:
    """Load one part's state from the shards of a checkpoint (every rank calls this).

    The part's current ``state_dict()`` is the template: Distributed Checkpoint fills its
    tensors in place, each with the shard this rank holds now (a full tensor when the part
    is not sharded), whatever the number of processes that wrote the checkpoint. When the
    checkpoint holds entries the template lacks (a fresh optimizer has no moments yet),
    the part first creates them (its :py:meth:`~CheckpointPart.prepare_to_load`).

    Args:
        path: the checkpoint folder.
        key: the part's key.
        part: the part.

    Raises:
        RuntimeError: if the checkpoint lacks entries the part needs (from
            ``torch.distributed.checkpoint``).
    """
    metadata = read_metadata(path)
    template = {key: part.state_dict()}
    saved = {name for name in metadata.state_dict_metadata if name.startswith(f"{key}.")}
    if not saved <= _flat_keys(template, metadata):
        part.prepare_to_load()
        template = {key: part.state_dict()}
    _load(template, path, single_process=not _has_process_group())
    part.load_state_dict(template[key])


def load_full_into_sharded(state: Any, part: CheckpointPart) -> None:
    """Load a part's full (unsharded) state into the part, sharded like its own state.

    This is how a sharded run resumes from a one-file checkpoint: one written before the
    model was sharded, or exported with :py:func:`export_full_checkpoint`. Every rank holds
    the full state and keeps its shard of each tensor (a collective: every rank calls it).

    Args:
        state: the part's entry of the checkpoint (full tensors).
        part: the part, whose current state gives each tensor's mesh and placements.
    """
    part.prepare_to_load()  # an optimizer's state is replaced by the loaded one, empty or not
    from helios.model.sharding import shard_state_like

    part.load_state_dict(shard_state_like(state, part.state_dict()))


def _set_nested(target: dict[str, Any], keys: tuple[Any, ...], value: Any) -> None:
    """Set ``value`` at a path of dict keys and list indices, creating what is missing."""
    node: Any = target
    for here, after in itertools.pairwise(keys):
        empty: Any = [] if isinstance(after, int) else {}
        if isinstance(node, list):
            while len(node) <= here:
                node.append(None)
            if node[here] is None:
                node[here] = empty
        else:
            node.setdefault(here, empty)
        node = node[here]
    last = keys[-1]
    if isinstance(node, list):
        while len(node) <= last:
            node.append(None)
    node[last] = value


def load_full_state(path: pathlib.Path) -> dict[str, Any]:
    """Load every sharded part of a checkpoint as full tensors, on one process.

    No process group is needed (nor used when one exists): the shards of all ranks are read
    and joined.

    Args:
        path: the checkpoint folder.

    Returns:
        The sharded parts' states by key, nested as they were saved, with plain tensors.
        Dict keys come back as strings, except the parameter keys of optimizer states.
    """
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    metadata = read_metadata(path)
    flat: dict[str, Any] = {}
    for name, entry in metadata.state_dict_metadata.items():
        if isinstance(entry, TensorStorageMetadata):
            flat[name] = torch.empty(entry.size, dtype=entry.properties.dtype)
        else:
            flat[name] = None
    _load(flat, path, single_process=True)
    nested: dict[str, Any] = {}
    mappings = metadata.planner_data or {}
    for name, value in flat.items():
        _set_nested(nested, tuple(mappings.get(name, (name,))), value)
    _restore_optimizer_keys(nested)
    return nested


def _restore_optimizer_keys(node: Any) -> None:
    """Give optimizer states back their integer parameter keys.

    Distributed Checkpoint records dict keys as strings, so ``{"state": {0: ...}}`` comes
    back as ``{"state": {"0": ...}}``, which ``Optimizer.load_state_dict`` would not match
    to a parameter. Other integer dict keys of a state stay strings.
    """
    if not isinstance(node, dict):
        return
    state = node.get("state")
    if isinstance(state, dict) and isinstance(node.get("param_groups"), list):
        node["state"] = {int(k) if k.isdigit() else k: v for k, v in state.items()}
        return
    for value in node.values():
        _restore_optimizer_keys(value)


def export_full_checkpoint(
    path: str | os.PathLike[str], output: str | os.PathLike[str] | None = None
) -> pathlib.Path:
    """Write a sharded checkpoint as one ordinary checkpoint file of full tensors.

    The file holds every part of the checkpoint, with the model's networks and optimizers
    unsharded: ``torch.load(output)["model"]`` loads into the unsharded networks (for
    inference or ONNX export), and a trainer resumes from the file as from any checkpoint.
    It runs on one process, without a process group; a sharded run on any number of
    processes also resumes from it (:py:func:`load_full_into_sharded`). Types of your own in the
    checkpoint must be registered for ``torch.load(weights_only=True)`` first (see
    :py:meth:`helios.model.Model.types_for_safe_load`).

    Args:
        path: the sharded checkpoint (a ``.dcp`` folder).
        output: the file to write; ``None`` writes ``<path without .dcp>.pth`` next to it.

    Returns:
        The path of the written file.

    Raises:
        ValueError: if ``path`` is not a complete sharded checkpoint.
        CheckpointWriteError: if the file cannot be written.
    """
    register_trainer_types_for_safe_load()
    source = pathlib.Path(path)
    if not is_sharded_checkpoint(source):
        raise ValueError(
            f"invalid path={str(source)!r}: expected a sharded checkpoint folder "
            f"ending in {SHARDED_SUFFIX}"
        )
    target = pathlib.Path(output) if output is not None else source.with_suffix(CHECKPOINT_SUFFIX)
    contents = read_sharded_contents(source, map_location="cpu")
    contents.update(load_full_state(source))
    del contents[SHARDED_PARTS_KEY]
    save_atomically(contents, target)
    return target


__all__ = [
    "export_full_checkpoint",
    "load_full_into_sharded",
    "load_full_state",
    "load_sharded_part",
    "write_shards",
]
