"""Compiling a model's networks with ``torch.compile`` without changing its checkpoints."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

_WRAPPED = "_orig_mod."


def compile_in_place(owner: Any, names: Sequence[str], compile_kwargs: dict[str, Any]) -> list[str]:
    """Compile the ``nn.Module`` attributes of ``owner`` in place.

    Args:
        owner: the object (a :py:class:`~helios.model.Model`) holding the networks.
        names: the attribute names to compile; empty: every module with parameters.
        compile_kwargs: passed to ``torch.compile``.

    Returns:
        The names compiled by this call.

    Raises:
        ValueError: if a name is not an ``nn.Module`` attribute of ``owner``.
    """
    attributes = vars(owner)
    if names:
        for name in names:
            if not isinstance(attributes.get(name), nn.Module):
                found = sorted(k for k, v in attributes.items() if isinstance(v, nn.Module))
                raise ValueError(
                    f"compile_networks got name {name!r}, which is not an nn.Module "
                    f"attribute of the model. Its modules are: {found}"
                )
        chosen = list(names)
    else:
        chosen = [
            name
            for name, value in attributes.items()
            if isinstance(value, nn.Module) and any(True for _ in value.parameters())
        ]
    from torch._dynamo.eval_frame import OptimizedModule

    compiled = []
    for name in chosen:
        module: nn.Module = attributes[name]
        if isinstance(module, OptimizedModule):
            make_keys_compile_agnostic(module)
        elif getattr(module, "_compiled_call_impl", None) is None:
            compile_module(module, **compile_kwargs)
            compiled.append(name)
    return compiled


def compile_module(module: nn.Module, **compile_kwargs: Any) -> None:
    """Compile ``module``'s calls in place, as :py:meth:`torch.nn.Module.compile` does.

    The module keeps its class, parameters, attributes and ``state_dict`` keys; a copy
    (``copy.deepcopy``, pickling) drops the compiled call, as with ``Module.compile``.

    ``Module.compile`` hands ``torch.compile`` the module's own ``_call_impl``. When the
    module's ``forward`` also lives inside torch (``nn.Sequential``, ``nn.Linear``, ...),
    Dynamo skips both frames (they are in its skip list) and the module silently runs
    eagerly (pytorch/pytorch#150915). Compiling a function defined here that calls
    ``_call_impl`` gives Dynamo a frame it traces, for every kind of module.

    Forward hooks registered after this call are not picked up by the compiled code
    (Dynamo does not guard on hooks); register them first.

    Args:
        module: the module to compile.
        **compile_kwargs: passed to ``torch.compile``.
    """
    import torch

    def call(*args: Any, **kwargs: Any) -> Any:
        return module._call_impl(*args, **kwargs)

    module._compiled_call_impl = torch.compile(call, **compile_kwargs)


def make_keys_compile_agnostic(module: nn.Module) -> None:
    """Make a ``torch.compile`` wrapper save and load the keys of the module it wraps.

    ``torch.compile(net)`` returns a wrapper whose ``state_dict`` keys start with
    ``_orig_mod.``. After this call the wrapper's ``state_dict`` has the wrapped module's
    keys, and ``load_state_dict`` accepts them with or without the prefix.

    Args:
        module: the wrapper returned by ``torch.compile``.
    """
    if getattr(module, "_helios_compile_agnostic", False):
        return
    module.register_state_dict_post_hook(_drop_prefix)
    module.register_load_state_dict_pre_hook(_add_prefix)
    module._helios_compile_agnostic = True  # type: ignore[assignment]


def _drop_prefix(module: nn.Module, state_dict: Any, prefix: str, local_metadata: Any) -> None:
    wrapped = prefix + _WRAPPED
    if not any(key.startswith(wrapped) for key in state_dict):
        return
    items = list(state_dict.items())
    state_dict.clear()
    for key, value in items:
        if key.startswith(wrapped):
            key = prefix + key[len(wrapped) :]
        state_dict[key] = value


def _add_prefix(module: nn.Module, state_dict: Any, prefix: str, *args: Any) -> None:
    wrapped = prefix + _WRAPPED
    for key in [k for k in state_dict if k.startswith(prefix) and not k.startswith(wrapped)]:
        state_dict[wrapped + key[len(prefix) :]] = state_dict.pop(key)
