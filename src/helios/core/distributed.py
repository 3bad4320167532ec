"""Helpers over :py:mod:`torch.distributed` that work on any backend (NCCL or gloo).

Every helper is safe to call in a single process: queries return rank 0 / world size 1,
prints happen, barriers, means and broadcasts are identities.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
from collections.abc import Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")

_TORCHRUN_ENV_VARS = (
    "LOCAL_RANK",
    "RANK",
    "GROUP_RANK",
    "ROLE_RANK",
    "LOCAL_WORLD_SIZE",
    "WORLD_SIZE",
    "ROLE_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RESTART_COUNT",
    "TORCHELASTIC_RUN_ID",
)
_DEFAULT_MASTER_PORT = 12355

TIMEOUT_ENV_VAR = "HELIOS_DIST_TIMEOUT"
"""The environment variable that sets the process-group timeout, in seconds.

Read by :py:func:`init_dist` when it is given no ``timeout``: every collective and every
key-value store request of the group then fails after that long instead of torch's default
(30 minutes on gloo, 10 on NCCL), so that a rank whose peer is cut off (a network partition,
a frozen machine) fails with an error in bounded time instead of waiting. Added in
Helios 1.3.0.
"""


def timeout_from_environment() -> datetime.timedelta | None:
    """Return the process-group timeout set by ``HELIOS_DIST_TIMEOUT``, or None if unset.

    Returns:
        The timeout, or None when the variable is unset or empty (torch's default applies).

    Raises:
        ValueError: if the variable is not a positive, finite number of seconds.
    """
    value = os.environ.get(TIMEOUT_ENV_VAR, "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{TIMEOUT_ENV_VAR} must be a positive number of seconds, got {value!r}")
    return datetime.timedelta(seconds=seconds)


def is_using_torchrun() -> bool:
    """Return true if the process was launched by ``torchrun``.

    The check looks for all the environment variables ``torchrun`` sets (ranks, world sizes,
    master address/port and the torchelastic run id / restart count).
    """
    return all(var in os.environ for var in _TORCHRUN_ENV_VARS)


def init_dist(
    backend: str = "nccl",
    rank: int | None = None,
    world_size: int | None = None,
    master_port: int | None = None,
    device: torch.device | None = None,
    timeout: datetime.timedelta | None = None,
) -> None:
    """Initialise the default process group.

    With neither ``rank`` nor ``world_size``, the group is initialised from the environment
    (as under ``torchrun``). With both, the process is one of ``world_size`` processes on
    this machine: ``LOCAL_RANK``/``RANK``, ``LOCAL_WORLD_SIZE``/``WORLD_SIZE`` and
    ``MASTER_ADDR=localhost`` are set, and ``MASTER_PORT`` is taken from ``master_port``,
    else from the environment, else 12355. For ``"nccl"`` the group is bound to ``device``,
    which becomes the current CUDA device; it defaults to ``cuda:<rank>``, and to
    ``cuda:<LOCAL_RANK>`` when initialising from the environment.

    ``timeout`` bounds every collective and store request of the group: a rank waiting for
    a peer that is gone or cut off fails with an error after that long. Without it, the
    ``HELIOS_DIST_TIMEOUT`` environment variable (seconds) applies, else torch's default.

    Args:
        backend: the :py:mod:`torch.distributed` backend (``"nccl"`` or ``"gloo"``).
        rank: the rank of this process.
        world_size: the number of processes.
        master_port: the port of the rendezvous on ``localhost``.
        device: the CUDA device of this process (``"nccl"`` only; ignored otherwise).
        timeout: the process-group timeout (added in Helios 1.3.0).

    Raises:
        ValueError: if only one of ``rank`` and ``world_size`` is given, if ``rank`` is
            not in ``[0, world_size)``, if ``master_port`` is not a valid port, or if
            ``timeout`` (or ``HELIOS_DIST_TIMEOUT``) is not a positive duration.
    """
    if timeout is None:
        timeout = timeout_from_environment()
    elif timeout <= datetime.timedelta(0):
        raise ValueError(f"timeout must be a positive duration, got timeout={timeout}")
    if rank is None and world_size is None:
        env_device = None
        if backend == "nccl":
            env_device = device or torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(env_device)
        _init_from_environment(backend, env_device, timeout)
        return
    if rank is None or world_size is None:
        raise ValueError(
            "rank and world_size must be given together (or both None), got "
            f"rank={rank!r}, world_size={world_size!r}"
        )
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(
            f"expected 0 <= rank < world_size with world_size >= 1, got "
            f"rank={rank}, world_size={world_size}"
        )
    if master_port is not None and not 0 < master_port < 65536:
        raise ValueError(f"master_port must be in [1, 65535], got master_port={master_port}")

    port = (
        str(master_port)
        if master_port is not None
        else os.environ.get("MASTER_PORT", str(_DEFAULT_MASTER_PORT))
    )
    os.environ["LOCAL_RANK"] = os.environ["RANK"] = str(rank)
    os.environ["LOCAL_WORLD_SIZE"] = os.environ["WORLD_SIZE"] = str(world_size)
    os.environ["MASTER_ADDR"] = "localhost"
    os.environ["MASTER_PORT"] = port

    device_id = None
    if backend == "nccl":
        device_id = device or torch.device("cuda", rank)
        torch.cuda.set_device(device_id)
    dist.init_process_group(
        backend, rank=rank, world_size=world_size, device_id=device_id, **_timeout_kwarg(timeout)
    )


def _timeout_kwarg(timeout: datetime.timedelta | None) -> dict[str, Any]:
    return {} if timeout is None else {"timeout": timeout}


def _init_from_environment(
    backend: str, device: torch.device | None, timeout: datetime.timedelta | None = None
) -> None:
    """Join the process group that ``torchrun`` (or the environment) describes.

    Under ``torchrun``, the workers of every restart meet in the same key-value store, the
    agent's. The process group's keys (each rank's address among them) are the same in
    every attempt, so a restarted worker can read the address a dead worker of the previous
    attempt published and fail with "Connection refused" (or wait on it). The keys of each
    attempt therefore get a prefix of their own, from ``TORCHELASTIC_RESTART_COUNT``.

    Without the agent's store (``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``, which a job needs
    for a replacement node to join a restart) every round of the rendezvous gets a new store
    on a new port, so there are no keys of an earlier attempt; the prefix is then left out,
    as the restart counts of the nodes differ (a replacement node starts at 0).
    """
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if restart is None or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "False":
        dist.init_process_group(backend, device_id=device, **_timeout_kwarg(timeout))
        return
    store, rank, world_size = next(dist.rendezvous("env://", **_timeout_kwarg(timeout)))
    store = dist.PrefixStore(f"helios/attempt_{restart}", store)
    dist.init_process_group(
        backend,
        store=store,
        rank=rank,
        world_size=world_size,
        device_id=device,
        **_timeout_kwarg(timeout),
    )


def shutdown_dist() -> None:
    """Destroy the default process group (no-op if none is active)."""
    if is_dist_active():
        dist.destroy_process_group()


def is_dist_active() -> bool:
    """Return true if :py:mod:`torch.distributed` is available and initialised."""
    return dist.is_available() and dist.is_initialized()


@dataclasses.dataclass
class DistributedInfo:
    """Ranks and world sizes of the current process.

    Args:
        local_rank: the rank on this node.
        rank: the global rank.
        local_world_size: the number of processes on this node.
        world_size: the total number of processes.
    """

    local_rank: int = 0
    rank: int = 0
    local_world_size: int = 1
    world_size: int = 1


def get_dist_info() -> DistributedInfo:
    """Return the ranks and world sizes of this process.

    When the process group is initialised, the global rank and world size come from
    :py:mod:`torch.distributed`; the local rank and local world size come from the
    ``LOCAL_RANK`` / ``LOCAL_WORLD_SIZE`` environment variables, falling back to the global
    values. Otherwise the defaults of :py:class:`DistributedInfo` are returned.

    Returns:
        The distributed information.
    """
    if not is_dist_active():
        return DistributedInfo()
    rank = dist.get_rank()
    world_size = dist.get_world_size()
    return DistributedInfo(
        local_rank=int(os.environ.get("LOCAL_RANK", rank)),
        rank=rank,
        local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", world_size)),
        world_size=world_size,
    )


def get_local_rank() -> int:
    """Return the rank on this node (0 when not distributed)."""
    return get_dist_info().local_rank


def get_global_rank() -> int:
    """Return the global rank (0 when not distributed)."""
    return get_dist_info().rank


def get_world_size() -> int:
    """Return the number of processes in the run (1 when not distributed).

    Added in Helios 1.3.0.
    """
    return get_dist_info().world_size


def get_local_world_size() -> int:
    """Return the number of processes on this node (1 when not distributed).

    Added in Helios 1.3.0.
    """
    return get_dist_info().local_world_size


def _require_dist() -> None:
    if not is_dist_active():
        raise RuntimeError("default process group has not been initialized")


def gather_into_tensor(tensor: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Gather a same-shaped tensor from every rank into one tensor.

    The output is allocated on the input tensor's device with its dtype; the tensors are
    concatenated (or stacked, depending on ``size``) in rank order.

    Args:
        tensor: this rank's tensor.
        size: the shape of the output, e.g. ``(world_size * n,)`` or
            ``(world_size, *tensor.shape)``.

    Returns:
        The gathered tensor.

    Raises:
        RuntimeError: if the process group is not initialised.
        ValueError: if ``size`` does not hold exactly ``world_size * tensor.numel()``
            elements.
    """
    _require_dist()
    world_size = dist.get_world_size()
    expected = world_size * tensor.numel()
    if math.prod(size) != expected:
        raise ValueError(
            f"size={tuple(size)} holds {math.prod(size)} elements, expected "
            f"world_size * tensor.numel() = {expected}"
        )
    # Gather flat, then reshape: concatenation and stacking share one memory layout, and
    # some backends (gloo) only accept the concatenated form.
    out = torch.zeros(expected, dtype=tensor.dtype, device=tensor.device)
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    gather(out, tensor.contiguous().view(-1))
    return out.view(tuple(size))


def _default_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_tensors(tensor: torch.Tensor | list[Any], **kwargs: Any) -> torch.Tensor:
    """All-reduce a tensor in place (default op: sum) and return it.

    A list (of numbers or of 0-d/same-shaped tensors) is first turned into a tensor on the
    backend's device: the current CUDA device for NCCL, the CPU otherwise.

    Args:
        tensor: the tensor or list to reduce.
        **kwargs: extra arguments for :py:func:`torch.distributed.all_reduce` (e.g. ``op``).

    Returns:
        The reduced tensor.

    Raises:
        RuntimeError: if the process group is not initialised.
    """
    _require_dist()
    if isinstance(tensor, list):
        device = _default_device()
        if tensor and all(isinstance(t, torch.Tensor) for t in tensor):
            tensor = torch.stack([t.to(device) for t in tensor])
        else:
            tensor = torch.tensor(tensor, device=device)
    dist.all_reduce(tensor, **kwargs)
    return tensor


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Average a floating-point tensor across ranks, in place.

    Args:
        tensor: the tensor; it is returned unchanged when not distributed.

    Returns:
        The same tensor, now holding the mean over ranks.

    Raises:
        TypeError: if ``tensor`` is not a floating-point or complex tensor.
    """
    if not isinstance(tensor, torch.Tensor) or not (
        tensor.is_floating_point() or tensor.is_complex()
    ):
        kind = tensor.dtype if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise TypeError(f"all_reduce_mean expects a floating-point tensor, got {kind}")
    if not is_dist_active():
        return tensor
    dist.all_reduce(tensor)
    tensor.div_(dist.get_world_size())
    return tensor


def broadcast_object(obj: T, src: int = 0) -> T:
    """Send a picklable object from rank ``src`` to every rank.

    Args:
        obj: the object (only the value on ``src`` matters).
        src: the global rank that sends.

    Returns:
        The object of rank ``src`` (``obj`` itself when not distributed).
    """
    if not is_dist_active():
        return obj
    objects: list[Any] = [obj]
    dist.broadcast_object_list(objects, src=src)
    result: T = objects[0]
    return result


def agree_any(flag: bool, device: torch.device | None) -> bool:
    """Return True on every rank if any rank's flag is True (one all-reduce of one int).

    Args:
        flag: this rank's decision.
        device: the device for the collective (the CPU for gloo), or ``None`` when not
            distributed: then the flag is returned as it is.

    Returns:
        The agreed decision.
    """
    if device is None:
        return flag
    tensor = torch.tensor([int(flag)], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


def global_print(*args: Any, global_rank: int = 0, **kwargs: Any) -> None:
    """Print only on the process with the given global rank (always when not distributed).

    Args:
        *args: positional arguments for :py:func:`print`.
        global_rank: the global rank that prints.
        **kwargs: keyword arguments for :py:func:`print`.
    """
    if not is_dist_active() or get_global_rank() == global_rank:
        print(*args, **kwargs)


def local_print(*args: Any, local_rank: int = 0, **kwargs: Any) -> None:
    """Print only on the process with the given local rank (always when not distributed).

    Args:
        *args: positional arguments for :py:func:`print`.
        local_rank: the local rank that prints.
        **kwargs: keyword arguments for :py:func:`print`.
    """
    if not is_dist_active() or get_local_rank() == local_rank:
        print(*args, **kwargs)


def safe_barrier(**kwargs: Any) -> None:
    """Wait for all ranks (no-op when not distributed).

    Args:
        **kwargs: arguments for :py:func:`torch.distributed.barrier`.
    """
    if is_dist_active():
        dist.barrier(**kwargs)
