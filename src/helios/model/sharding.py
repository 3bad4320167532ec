"""Sharding a model's networks with FSDP2 (``torch.distributed.fsdp.fully_shard``).

:py:func:`shard_network` applies ``fully_shard`` to the layers of a network and then to the
network itself, so every rank holds only its shard of the parameters, gradients and
optimizer state; a layer's full parameters exist only while it computes. Inside a
:py:class:`~helios.model.Model`, call :py:meth:`~helios.model.Model.shard_network` in
``setup``, where a replicated model wraps its network in DDP; it picks the run's device,
process group and mixed-precision policy.

The networks' and optimizers' ``state_dict`` then hold ``DTensor`` shards. The trainer
writes such a state through Distributed Checkpoint, every rank its own shards
(:py:mod:`helios.trainer.checkpoint.sharded`), and loads it back on any number of processes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.fsdp import MixedPrecisionPolicy

LayerSelector = type[nn.Module] | Iterable[type[nn.Module]] | Callable[[nn.Module], bool]

_MIXED_PARAM_DTYPES = {"bf16-mixed": torch.bfloat16, "fp16-mixed": torch.float16}


def mixed_precision_policy(precision: str) -> MixedPrecisionPolicy | None:
    """Return the FSDP2 mixed-precision policy of a run precision.

    ``"bf16-mixed"`` and ``"fp16-mixed"`` compute the forward and backward passes with
    parameters cast to 16 bits and reduce the gradients in float32; the sharded parameters,
    their gradients and the optimizer state stay float32, as the name "mixed" says.

    Args:
        precision: one of ``"32"``, ``"bf16-mixed"``, ``"fp16-mixed"``.

    Returns:
        The policy, or ``None`` at ``"32"``.

    Raises:
        ValueError: if ``precision`` is not one of the three.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if precision == "32":
        return None
    if precision not in _MIXED_PARAM_DTYPES:
        raise ValueError(
            f"invalid precision={precision!r}; expected '32', 'bf16-mixed' or 'fp16-mixed'"
        )
    return MixedPrecisionPolicy(
        param_dtype=_MIXED_PARAM_DTYPES[precision], reduce_dtype=torch.float32
    )


def _has_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def default_layers(network: nn.Module) -> list[nn.Module]:
    """Return the layers :py:func:`shard_network` shards one by one when none are named.

    They are the entries of the network's ``nn.ModuleList`` and ``nn.Sequential``
    containers (the outermost ones; the network itself counts when it is one), such as the
    blocks of a transformer; a network without such containers gives its direct children.
    Only modules that hold parameters are returned.

    Args:
        network: the network.

    Returns:
        The layers, in the network's module order.
    """
    containers: list[nn.Module] = []
    stack = [network]
    while stack:
        module = stack.pop()
        if isinstance(module, nn.ModuleList | nn.Sequential):
            containers.append(module)
        else:
            stack.extend(reversed(list(module.children())))
    if not containers:
        containers = [network]
    return [
        layer
        for container in containers
        for layer in container.children()
        if _has_parameters(layer)
    ]


def _selected_layers(network: nn.Module, layers: LayerSelector | None) -> list[nn.Module]:
    if layers is None:
        return default_layers(network)
    if callable(layers) and not isinstance(layers, type):
        predicate = layers
    else:
        types = (layers,) if isinstance(layers, type) else tuple(layers)
        if not types or not all(isinstance(t, type) and issubclass(t, nn.Module) for t in types):
            raise TypeError(
                f"invalid layers={layers!r}; expected nn.Module subclasses or a "
                "function that takes a module and returns whether it is a layer"
            )

        def predicate(module: nn.Module) -> bool:
            return isinstance(module, types)

    return [m for m in network.modules() if m is not network and predicate(m)]


def shard_network(
    network: nn.Module,
    *,
    mesh: DeviceMesh | None = None,
    device_type: str | None = None,
    layers: LayerSelector | None = None,
    precision: str = "32",
    reshard_after_forward: bool = True,
) -> nn.Module:
    """Shard a network over the ranks of a process group with FSDP2.

    ``fully_shard`` is applied to each layer, innermost first, then to the network, which
    is sharded in place (it stays the same object and keeps its ``state_dict`` keys). Create
    the optimizers after sharding, from the sharded parameters.

    Args:
        network: the network (on the device it trains on, or on the CPU for a CPU mesh).
        mesh: the device mesh to shard over; ``None`` makes a one-dimensional mesh of all
            ranks of the default process group on ``device_type``.
        device_type: ``"cpu"`` or ``"cuda"``, for the mesh made when none is given;
            ``None`` takes the network's device type, and for a network on the meta device
            (built without memory, to be materialised after sharding with ``to_empty``)
            ``"cuda"`` when CUDA is available, else ``"cpu"``.
        layers: which submodules are sharded (and gathered) as one unit: ``nn.Module``
            types, or a function of a module; ``None`` picks :py:func:`default_layers`.
        precision: the run's precision; it sets the mixed-precision policy
            (:py:func:`mixed_precision_policy`).
        reshard_after_forward: free each layer's gathered parameters after its forward pass
            (less memory, one more all-gather in the backward pass).

    Returns:
        The sharded network (the same object as ``network``).

    Raises:
        RuntimeError: if no process group is initialised and no mesh is given.
        TypeError: if ``network`` is not a module, or ``layers`` is neither module types
            nor a function.
    """
    import torch.distributed as torch_dist
    from torch.distributed.fsdp import fully_shard

    if not isinstance(network, nn.Module):
        raise TypeError(f"invalid network={network!r}: expected a torch.nn.Module to shard")
    if mesh is None:
        if not (torch_dist.is_available() and torch_dist.is_initialized()):
            raise RuntimeError(
                "shard_network needs an initialised process group (run under "
                "torchrun or the Trainer's distributed launch) or an explicit mesh"
            )
        from torch.distributed.device_mesh import init_device_mesh

        if device_type is None:
            device_type = next(network.parameters(), torch.empty(0)).device.type
            if device_type == "meta":
                device_type = "cuda" if torch.cuda.is_available() else "cpu"
        mesh = init_device_mesh(device_type, (torch_dist.get_world_size(),))
    options: dict[str, Any] = {"mesh": mesh, "reshard_after_forward": reshard_after_forward}
    policy = mixed_precision_policy(precision)
    if policy is not None:
        options["mp_policy"] = policy
    selected = {id(m) for m in _selected_layers(network, layers)}
    # Post-order: a layer nested in another is sharded before the one that holds it.
    for module in reversed(list(network.modules())):
        if module is not network and id(module) in selected:
            fully_shard(module, **options)
    fully_shard(network, **options)
    return network


def is_sharded_tensor(value: Any) -> bool:
    """Whether ``value`` is a ``DTensor`` (one rank's shard of a distributed tensor)."""
    return isinstance(value, torch.Tensor) and callable(getattr(value, "to_local", None))


def local_shard(tensor: torch.Tensor) -> torch.Tensor:
    """Return this rank's part of a ``DTensor``, or ``tensor`` itself when it is plain."""
    if is_sharded_tensor(tensor):
        local: torch.Tensor = tensor.to_local()  # type: ignore[attr-defined]
        return local
    return tensor


def shard_like(value: Any, target: Any) -> Any:
    """Turn a full tensor into this rank's shard, laid out like the ``DTensor`` ``target``.

    Every rank must hold the same full tensor (read from the same checkpoint, say): each
    keeps its own part, without communication.

    Args:
        value: a plain tensor, or anything else.
        target: the ``DTensor`` whose mesh, placements and dtype the result takes.

    Returns:
        The shard as a ``DTensor`` when ``value`` is a plain tensor of ``target``'s global
        shape and ``target`` is a ``DTensor``; ``value`` itself otherwise (scalars such
        as Adam's step count stay as they are).
    """
    if not (is_sharded_tensor(target) and isinstance(value, torch.Tensor)):
        return value
    if is_sharded_tensor(value) or value.dim() == 0 or value.shape != target.shape:
        return value
    from torch.distributed.tensor import distribute_tensor

    local = local_shard(target)
    return distribute_tensor(
        value.to(device=local.device, dtype=target.dtype),
        target.device_mesh,
        target.placements,
        src_data_rank=None,
    )


def shard_state_like(state: Any, template: Any) -> Any:
    """Shard the full tensors of a nested state like the ``DTensor`` leaves of ``template``.

    :py:func:`shard_like` for every leaf of ``state`` whose place in ``template`` (the
    current ``state_dict()`` of the sharded object) holds a ``DTensor``; every other leaf is
    kept. Give an optimizer its state first (:py:func:`initialize_optimizer_state`), so its
    template has the tensors to shard like.

    Args:
        state: a full state (mappings, lists and tuples of tensors and other values).
        template: the sharded state it is loaded into.

    Returns:
        The state, with the matching full tensors replaced by this rank's shards.
    """
    if is_sharded_tensor(template):
        return shard_like(state, template)
    if isinstance(state, Mapping) and isinstance(template, Mapping):
        return {
            key: shard_state_like(value, template[key]) if key in template else value
            for key, value in state.items()
        }
    if isinstance(state, list | tuple) and isinstance(template, list | tuple):
        shaped = [shard_state_like(a, b) for a, b in zip(state, template, strict=False)]
        shaped += list(state[len(shaped) :])
        return type(state)(shaped) if isinstance(state, tuple) else shaped
    return state


def holds_sharded_tensors(state: Any) -> bool:
    """Whether a (nested) state holds a ``DTensor`` anywhere.

    Args:
        state: a state dict, or any mix of mappings, lists, tuples and tensors.

    Returns:
        True if some leaf is a ``DTensor``.
    """
    if is_sharded_tensor(state):
        return True
    if isinstance(state, Mapping):
        return any(holds_sharded_tensors(value) for value in state.values())
    if isinstance(state, list | tuple):
        return any(holds_sharded_tensors(value) for value in state)
    return False


def is_sharded_network(network: nn.Module) -> bool:
    """Whether some parameter of ``network`` is a ``DTensor`` shard."""
    return any(is_sharded_tensor(p) for p in network.parameters())


def initialize_optimizer_state(optimizer: torch.optim.Optimizer) -> bool:
    """Give an optimizer that has not stepped yet its state tensors, leaving the weights.

    An optimizer creates its state (Adam's moments, SGD's momentum) at its first step, so a
    fresh optimizer's ``state_dict`` has none of it to load a checkpoint into. This runs one
    step with zero gradients and every learning rate at 0, which creates the state without
    changing a parameter; loading a checkpoint then overwrites it. Gradients are left
    unset afterwards.

    Args:
        optimizer: the optimizer.

    Returns:
        Whether a state was created (false if the optimizer already had one).
    """
    if optimizer.state:
        return False
    params = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
    saved_lrs = [group["lr"] for group in optimizer.param_groups]
    for param in params:
        param.grad = torch.zeros_like(param)
    try:
        for group in optimizer.param_groups:
            group["lr"] = 0.0 if not isinstance(group["lr"], torch.Tensor) else group["lr"] * 0
        optimizer.step()
    finally:
        for group, lr in zip(optimizer.param_groups, saved_lrs, strict=True):
            group["lr"] = lr
        for param in params:
            param.grad = None
    return True


__all__ = [
    "LayerSelector",
    "default_layers",
    "holds_sharded_tensors",
    "initialize_optimizer_state",
    "is_sharded_network",
    "is_sharded_tensor",
    "local_shard",
    "mixed_precision_policy",
    "shard_like",
    "shard_network",
    "shard_state_like",
]
