"""``fit(shard=True)``: a sharded copy of the engine's model for the run, and back.

FSDP2 (``fully_shard``) replaces a module's parameters with ``DTensor`` shards and cannot
be undone, while the user's model and optimizer must come back from ``fit`` as they went
in. So every process of a distributed run shards a *copy* of the model
(:py:func:`helios.model.sharding.shard_network`, with the run's precision) and points the
user's optimizers at the copy's parameters, matched by name, with their state (if any)
sharded alongside. When the run ends, the copy's full weights and optimizer state are
gathered (``DTensor.full_tensor()``, a collective of every rank) and loaded into the
user's model and optimizers, which point at the user's parameters again.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from helios.model.sharding import (
    initialize_optimizer_state,
    is_sharded_tensor,
    shard_like,
    shard_network,
    shard_state_like,
)


def _full(value: Any, device: torch.device) -> Any:
    """Gather ``DTensor`` shards (nested in dicts and lists) into full tensors on ``device``."""
    if is_sharded_tensor(value):
        return value.full_tensor().to(device)
    if isinstance(value, Mapping):
        return {key: _full(item, device) for key, item in value.items()}
    if isinstance(value, list):
        return [_full(item, device) for item in value]
    return value


class ShardedCopy:
    """A copy of a model sharded over the run's processes, which the optimizers train.

    Made by every process of a distributed run when the run starts (``setup``): the
    model is copied (``copy.deepcopy``), moved to ``device``, given rank 0's weights and
    buffers (as ``DistributedDataParallel`` does), and sharded with FSDP2 over a
    one-dimensional mesh of all ranks. The optimizers then train the copy's parameters,
    and their state (from an earlier ``fit``) is sharded the same way.

    Args:
        module: the user's model (left as it is until :py:meth:`release`).
        optimizers: the user's optimizers of the model.
        device: the device of this process.
        precision: the run's precision (the FSDP2 mixed-precision policy).
        keep: objects the copy refers to that must not be copied (the engine).

    Raises:
        ValueError: if an optimizer holds a tensor that is not a parameter of the model.
        TypeError: if the model cannot be copied.
    """

    def __init__(
        self,
        module: nn.Module,
        optimizers: Sequence[torch.optim.Optimizer],
        device: torch.device,
        precision: str,
        keep: Sequence[Any] = (),
    ) -> None:
        import torch.distributed as torch_dist
        from torch.distributed.device_mesh import init_device_mesh

        self.original = module
        self.optimizers = list(optimizers)
        names = {id(p): name for name, p in module.named_parameters()}
        for index, optimizer in enumerate(self.optimizers):
            for group in optimizer.param_groups:
                for param in group["params"]:
                    if id(param) not in names:
                        raise ValueError(
                            f"shard=True: optimizer {index} ({type(optimizer).__name__}) "
                            f"trains a tensor of shape {tuple(param.shape)} that is not a "
                            f"parameter of the model ({type(module).__name__}); only the "
                            "model's parameters can be sharded"
                        )
        try:
            self.copy: nn.Module = copy.deepcopy(module, {id(obj): obj for obj in keep})
        except Exception as error:
            raise TypeError(
                f"shard=True trains a sharded copy of the model, but copy.deepcopy of "
                f"{type(module).__name__} failed: {type(error).__name__}: {error}"
            ) from error
        self.copy.to(device)
        with torch.no_grad():
            for tensor in [*self.copy.parameters(), *self.copy.buffers()]:
                tensor.grad = None
                torch_dist.broadcast(tensor.detach(), src=0)
        mesh = init_device_mesh(device.type, (torch_dist.get_world_size(),))
        shard_network(self.copy, mesh=mesh, precision=precision)

        # Point the optimizers at the copy's parameters; keep what to restore.
        sharded = dict(self.copy.named_parameters())
        self._saved: list[tuple[list[list[nn.Parameter]], dict[Any, Any]]] = []
        for optimizer in self.optimizers:
            old_groups = [group["params"] for group in optimizer.param_groups]
            old_state = dict(optimizer.state)
            self._saved.append((old_groups, old_state))
            new_state: dict[Any, Any] = {}
            for group in optimizer.param_groups:
                params = [sharded[names[id(p)]] for p in group["params"]]
                for old, new in zip(group["params"], params, strict=True):
                    if old in old_state:
                        new_state[new] = {
                            key: shard_like(value, new) for key, value in old_state[old].items()
                        }
                group["params"] = params
            optimizer.state.clear()
            optimizer.state.update(new_state)

    def full_state(self, device: torch.device) -> dict[str, Any]:
        """Gather the copy's full weights and optimizer states (every rank must call this).

        Buffers, which FSDP2 does not shard, are rank 0's.

        Args:
            device: where the full tensors go (the user's model's device).

        Returns:
            ``{"module": state_dict, "optimizers": [state_dict, ...]}`` of plain tensors,
            loadable into the user's model and optimizers.
        """
        import torch.distributed as torch_dist

        module_state = {}
        with torch.no_grad():
            for key, value in self.copy.state_dict().items():
                if isinstance(value, torch.Tensor) and not is_sharded_tensor(value):
                    value = value.detach().clone()
                    torch_dist.broadcast(value, src=0)
                module_state[key] = _full(value, device)
            optimizers = [_full(o.state_dict(), device) for o in self.optimizers]
        return {"module": module_state, "optimizers": optimizers}

    def load_full_state(self, state: Mapping[str, Any]) -> None:
        """Load full (plain) weights and optimizer states into the copy, sharding them.

        Args:
            state: ``{"module": ..., "optimizers": [...]}`` as :py:meth:`full_state` returns
                (or a one-file checkpoint holds).
        """
        self.copy.load_state_dict(shard_state_like(state["module"], self.copy.state_dict()))
        for optimizer, saved in zip(self.optimizers, state["optimizers"], strict=False):
            initialize_optimizer_state(optimizer)  # its tensors to shard like; then replaced
            optimizer.load_state_dict(shard_state_like(saved, optimizer.state_dict()))

    def release(self, state: Mapping[str, Any] | None) -> None:
        """Point the optimizers at the user's parameters again; load ``state`` if given.

        Args:
            state: the run's final :py:meth:`full_state`, loaded into the user's model and
                optimizers; ``None`` (a failed run) leaves them as they were before it.
        """
        for optimizer, (groups, saved) in zip(self.optimizers, self._saved, strict=True):
            for group, params in zip(optimizer.param_groups, groups, strict=True):
                group["params"] = params
            optimizer.state.clear()
            optimizer.state.update(saved)
        if state is not None:
            self.original.load_state_dict(state["module"])
            for optimizer, optimizer_state in zip(
                self.optimizers, state["optimizers"], strict=True
            ):
                optimizer.load_state_dict(optimizer_state)


__all__ = ["ShardedCopy"]
