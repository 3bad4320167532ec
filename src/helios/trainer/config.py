"""The run configuration: the Trainer's arguments, checked once and frozen.

:py:func:`build_config` checks every constructor argument (:py:mod:`.arguments` raises as
soon as the Trainer is built, naming the argument) and places the run on its devices; the
result, a :py:class:`RunConfig`, is what every run of the trainer follows. It never
changes: what a run finds out as it starts (its ranks, its device) is its run context
(:py:class:`helios.trainer.launch.RunContext`).
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import pathlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

import helios.trainer.arguments as check
from helios.core import distributed as dist
from helios.core import rng
from helios.core.training_state import TrainingUnit

from .checkpoint.retention import RetentionPolicy
from .loops import LoopOptions

if TYPE_CHECKING:
    from helios.loggers import ExperimentLogger


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """What every run of a Trainer follows (see :py:class:`helios.trainer.Trainer`).

    Attributes are the Trainer's arguments, checked; ``retention`` holds the four
    ``chkpt_keep_*``/``chkpt_best_*`` arguments, ``precision`` the precision's name. The
    devices: ``use_cpu`` (``None`` resolved), ``gpu_ids`` (every visible GPU when none
    were listed), ``is_torchrun`` and ``is_distributed`` (several GPUs, or a ``torchrun``
    world of several processes).
    """

    run_name: str
    train_unit: TrainingUnit
    total_steps: int | float
    valid_frequency: int | None
    chkpt_frequency: int | None
    print_frequency: int | None
    accumulation_steps: int
    early_stop_cycles: int | None
    enable_cudnn_benchmark: bool
    enable_deterministic: bool
    random_seed: int
    enable_tensorboard: bool
    enable_file_logging: bool
    enable_progress_bar: bool
    chkpt_root: pathlib.Path | None
    log_path: pathlib.Path | None
    run_path: pathlib.Path | None
    src_root: pathlib.Path | None
    import_prefix: str
    print_banner: bool
    capture_warnings: bool
    loggers: tuple[ExperimentLogger, ...]
    precision: str
    enable_compile: bool
    retention: RetentionPolicy
    chkpt_async: bool
    nonfinite_guard: bool
    print_summaries: bool
    dist_timeout: datetime.timedelta | None
    use_cpu: bool
    gpu_ids: tuple[int, ...]
    is_torchrun: bool
    is_distributed: bool

    def device_for(self, local_rank: int) -> torch.device:
        """The device of the process with this local rank.

        Raises:
            ValueError: if the local rank has no GPU among ``gpu_ids``.
        """
        if self.use_cpu:
            return torch.device("cpu")
        if not 0 <= local_rank < len(self.gpu_ids):
            raise ValueError(
                f"local_rank={local_rank} has no GPU: gpus={list(self.gpu_ids)} holds "
                f"{len(self.gpu_ids)} id(s)"
            )
        return torch.device("cuda", self.gpu_ids[local_rank])

    def map_location_for(self, local_rank: int) -> dict[str, str]:
        """Where the tensors of a loaded checkpoint go in the process with this local rank.

        Tensors saved on any of the run's GPUs (and on ``cuda:0``) go to its device.
        """
        if self.use_cpu:
            return {"cuda:0": "cpu"}
        device = str(self.device_for(local_rank))
        located = {f"cuda:{i}": device for i in self.gpu_ids}
        located.setdefault("cuda:0", device)
        return located

    def loop_options(self, show_progress: bool) -> LoopOptions:
        """The training loop's settings, for a process that does or does not draw bars."""
        return LoopOptions(
            train_unit=self.train_unit,
            total_steps=self.total_steps,
            valid_frequency=self.valid_frequency,
            chkpt_frequency=self.chkpt_frequency,
            print_frequency=self.print_frequency,
            accumulation_steps=self.accumulation_steps,
            early_stop_cycles=self.early_stop_cycles,
            show_progress=show_progress,
        )


def build_config(arguments: dict[str, Any]) -> RunConfig:
    """Check the Trainer's arguments, in the order of its signature, and build the config.

    Args:
        arguments: the Trainer's arguments by name (every one of them).

    Returns:
        The configuration.

    Raises:
        ValueError: for an invalid value or combination of arguments.
        TypeError: for an argument of the wrong type.
        RuntimeError: if CUDA is requested but unavailable.
    """
    a = arguments
    if not isinstance(a["run_name"], str):
        raise TypeError(f"run_name must be a str, but received {a['run_name']!r}")
    c: dict[str, Any] = {"run_name": a["run_name"]}
    c["train_unit"] = check.check_train_unit(a["train_unit"])
    c["total_steps"] = check.check_total_steps(a["total_steps"])
    for name in ("valid_frequency", "chkpt_frequency", "print_frequency"):
        c[name] = check.check_positive_int(name, a[name])
    c["accumulation_steps"] = check.check_positive_int(
        "accumulation_steps", a["accumulation_steps"], optional=False
    )
    c["early_stop_cycles"] = check.check_positive_int("early_stop_cycles", a["early_stop_cycles"])
    seed = check.check_random_seed(a["random_seed"])
    c["random_seed"] = rng.get_default_seed() if seed is None else seed
    for name in ("chkpt_root", "log_path", "run_path", "src_root"):
        c[name] = check.check_path(name, a[name])
    flags = ("enable_deterministic", "enable_cudnn_benchmark", "enable_tensorboard")
    check.check_flags(
        **{name: a[name] for name in (*flags, "enable_file_logging")},
        **{name: c[name] for name in ("run_path", "log_path", "chkpt_frequency")},
        **{name: c[name] for name in ("chkpt_root", "src_root")},
    )
    for name in (*flags, "enable_file_logging", "enable_progress_bar", "import_prefix"):
        c[name] = a[name]
    c["print_banner"] = a["print_banner"]
    c["capture_warnings"] = bool(a["capture_warnings"])
    c["loggers"] = tuple(check.check_loggers(a["loggers"]))
    c["retention"] = check.check_retention(
        a["chkpt_keep_last"], a["chkpt_keep_best"], a["chkpt_best_metric"], a["chkpt_best_mode"]
    )
    if c["retention"].keep_best is not None and c["valid_frequency"] is None:
        raise ValueError(
            f"chkpt_keep_best={c['retention'].keep_best} ranks the checkpoints saved after "
            "a validation, but valid_frequency=None never validates: set valid_frequency"
        )
    for name in ("chkpt_async", "nonfinite_guard", "print_summaries"):
        c[name] = check.check_bool(name, a[name])
    c["dist_timeout"] = check.check_dist_timeout(a["dist_timeout"])
    c.update(_place_devices(a["use_cpu"], a["gpus"]))
    c["precision"] = check.check_precision(a["precision"], not c["use_cpu"])
    c["enable_compile"] = check.check_bool("enable_compile", a["enable_compile"])
    return RunConfig(**c)


def _place_devices(use_cpu: bool | None, gpus: Sequence[int] | None) -> dict[str, Any]:
    """Pick the device kind, the GPU ids and whether the run is distributed."""
    gpu_ids = check.check_gpus(gpus, use_cpu)
    on_cpu = use_cpu if use_cpu is not None else not torch.cuda.is_available()
    if on_cpu:
        gpu_ids = []
    elif not gpu_ids:
        gpu_ids = list(range(torch.cuda.device_count()))
    is_torchrun = dist.is_using_torchrun()
    if is_torchrun:
        is_distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
        local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        if not on_cpu and local_world_size > len(gpu_ids):
            raise ValueError(
                f"torchrun started {local_world_size} processes on this node "
                f"(LOCAL_WORLD_SIZE) but gpus={gpu_ids} gives only {len(gpu_ids)} GPU(s); "
                "each process needs its own GPU"
            )
    else:
        is_distributed = len(gpu_ids) > 1
    return {
        "use_cpu": on_cpu,
        "gpu_ids": tuple(gpu_ids),
        "is_torchrun": is_torchrun,
        "is_distributed": is_distributed,
    }


__all__ = ["RunConfig", "build_config"]
