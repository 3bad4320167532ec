"""Loading a network's weights with or without the ``module.`` prefix of a DDP wrapper.

A model that saves ``self._net.state_dict()`` itself (as the seeds do) saves the keys of
``DistributedDataParallel`` (``module.weight``) when the network is wrapped, which is only
in a distributed run: a checkpoint of ``torchrun --nproc_per_node=2 train.py`` would not
load into ``python train.py``'s plain network, nor the other way round. Before a
checkpoint's model entry is loaded, :py:func:`accept_wrapper_prefix` makes every network
on the model's attributes (one level into lists, tuples and dicts, as the default state
finds them) take either form: a ``DistributedDataParallel`` or ``DataParallel`` wrapper
adds the prefix to keys saved without it, and a plain network drops it from keys saved
with it. Keys that already fit are left alone, so nothing changes for a checkpoint that
loads today.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from torch import nn

WRAPPER_PREFIX = "module."
"""The prefix ``DistributedDataParallel`` and ``DataParallel`` give their module's keys."""

_MARK = "_helios_wrapper_prefix_agnostic"


def _items(value: Any) -> Iterator[Any]:
    if isinstance(value, list | tuple):
        yield from value
    elif isinstance(value, dict):
        yield from value.values()
    else:
        yield value


def accept_wrapper_prefix(model: object) -> None:
    """Let every network on the model's attributes load keys with or without ``module.``.

    Args:
        model: the model (its attributes are searched one level deep).
    """
    for value in vars(model).values():
        for item in _items(value):
            if isinstance(item, nn.Module):
                make_wrapper_prefix_agnostic(item)


def make_wrapper_prefix_agnostic(module: nn.Module) -> None:
    """Make ``module.load_state_dict`` accept keys with or without the wrapper's prefix.

    Args:
        module: a ``DistributedDataParallel``/``DataParallel`` wrapper (its wrapped module
            is handled too) or a plain network.
    """
    if getattr(module, _MARK, False):
        return
    if isinstance(module, nn.parallel.DistributedDataParallel | nn.DataParallel):
        module.register_load_state_dict_pre_hook(_add_prefix)
        make_wrapper_prefix_agnostic(module.module)
    elif "module" not in module._modules:  # a child named "module": its keys are its own
        module.register_load_state_dict_pre_hook(_drop_prefix)
    setattr(module, _MARK, True)


def _keys_under(state_dict: Any, prefix: str) -> list[str]:
    return [key for key in state_dict if key.startswith(prefix)]


def _add_prefix(module: nn.Module, state_dict: Any, prefix: str, *args: Any) -> None:
    keys = _keys_under(state_dict, prefix)
    wrapped = prefix + WRAPPER_PREFIX
    if keys and not any(key.startswith(wrapped) for key in keys):
        for key in keys:
            state_dict[wrapped + key[len(prefix) :]] = state_dict.pop(key)


def _drop_prefix(module: nn.Module, state_dict: Any, prefix: str, *args: Any) -> None:
    keys = _keys_under(state_dict, prefix)
    wrapped = prefix + WRAPPER_PREFIX
    if keys and all(key.startswith(wrapped) for key in keys):
        for key in keys:
            state_dict[prefix + key[len(wrapped) :]] = state_dict.pop(key)


def differs_only_by_wrapper_prefix(error: BaseException) -> bool:
    """Whether a ``load_state_dict`` error lists keys that differ only by ``module.``.

    Args:
        error: the error ``torch.nn.Module.load_state_dict`` raised.

    Returns:
        True if its missing and unexpected keys are the same keys, with the prefix on one
        side only.
    """
    text = str(error)
    missing = _listed(text, "Missing key(s) in state_dict:")
    unexpected = _listed(text, "Unexpected key(s) in state_dict:")
    if not missing or len(missing) != len(unexpected) or "size mismatch" in text:
        return False

    def bare(keys: list[str]) -> set[str]:
        return {key.replace(WRAPPER_PREFIX, "", 1) for key in keys}

    return bare(missing) == bare(unexpected) and set(missing) != set(unexpected)


def _listed(text: str, label: str) -> list[str]:
    start = text.find(label)
    if start < 0:
        return []
    line = text[start + len(label) :].split("\n", 1)[0]
    return re.findall(r'"([^"]*)"', line)


__all__ = [
    "WRAPPER_PREFIX",
    "accept_wrapper_prefix",
    "differs_only_by_wrapper_prefix",
    "make_wrapper_prefix_agnostic",
]
