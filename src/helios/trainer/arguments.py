"""Checks of the Trainer's constructor arguments.

Every check raises as soon as the Trainer is built, naming the argument, the value received
and what is allowed, so a typo never costs a run.
"""

from __future__ import annotations

import datetime
import math
import pathlib
from typing import Any

import torch

from helios.core.precision import PRECISIONS

from .checkpoint.retention import RetentionPolicy
from .state import TrainingUnit


def _describe(value: Any) -> str:
    return f"{value!r} (type {type(value).__name__})"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_train_unit(train_unit: Any) -> TrainingUnit:
    """Return the unit given as an enum or as ``"epoch"``/``"iteration"``.

    Args:
        train_unit: the value given to the Trainer.

    Returns:
        The unit.

    Raises:
        ValueError: for an unknown name.
        TypeError: for any other type.
    """
    if isinstance(train_unit, TrainingUnit):
        return train_unit
    if isinstance(train_unit, str):
        try:
            return TrainingUnit.from_str(train_unit)
        except ValueError:
            raise ValueError(
                f"invalid train_unit={train_unit!r}. Expected one of 'epoch', "
                "'iteration' or a TrainingUnit"
            ) from None
    raise TypeError(
        f"train_unit must be a TrainingUnit or one of 'epoch', 'iteration', "
        f"but received {_describe(train_unit)}"
    )


def check_total_steps(total_steps: Any) -> int | float:
    """Return ``total_steps`` as a non-negative int, or ``math.inf``.

    Args:
        total_steps: the value given to the Trainer.

    Returns:
        The number of steps.

    Raises:
        ValueError: for a negative, NaN or fractional value.
        TypeError: for a non-numeric value.
    """
    if _is_int(total_steps):
        if total_steps < 0:
            raise ValueError(f"total_steps must be >= 0 or math.inf, but received {total_steps}")
        return int(total_steps)
    if isinstance(total_steps, float):
        if total_steps == math.inf:
            return math.inf
        if math.isnan(total_steps) or total_steps < 0 or not total_steps.is_integer():
            raise ValueError(
                "total_steps must be a non-negative whole number or math.inf, but "
                f"received {total_steps}"
            )
        return int(total_steps)
    raise TypeError(
        f"total_steps must be an int or math.inf, but received {_describe(total_steps)}"
    )


def check_positive_int(name: str, value: Any, optional: bool = True) -> int | None:
    """Check a frequency-like argument: ``None`` (when optional) or an int >= 1.

    Args:
        name: the argument's name, for the message.
        value: the value given.
        optional: whether ``None`` is allowed.

    Returns:
        The value.

    Raises:
        ValueError: for a value below 1.
        TypeError: for a non-int value.
    """
    if value is None and optional:
        return None
    if not _is_int(value):
        allowed = "None or an int >= 1" if optional else "an int >= 1"
        raise TypeError(f"{name} must be {allowed}, but received {_describe(value)}")
    if value < 1:
        allowed = "None or an int >= 1" if optional else "an int >= 1"
        raise ValueError(f"{name} must be {allowed}, but received {value}")
    return int(value)


def check_random_seed(random_seed: Any) -> int | None:
    """Check that the seed is ``None`` or a non-negative int.

    Args:
        random_seed: the value given.

    Returns:
        The seed.

    Raises:
        ValueError: for a negative seed.
        TypeError: for a non-int seed.
    """
    if random_seed is None:
        return None
    if not _is_int(random_seed):
        raise TypeError(
            f"random_seed must be None or an int >= 0, but received {_describe(random_seed)}"
        )
    if random_seed < 0:
        raise ValueError(f"random_seed must be an int >= 0, but received {random_seed}")
    return int(random_seed)


def check_path(name: str, value: Any) -> pathlib.Path | None:
    """Check that a path argument is ``None``, a str or a Path that is not a file.

    Args:
        name: the argument's name.
        value: the value given.

    Returns:
        The path, or ``None``.

    Raises:
        TypeError: for another type.
        ValueError: if the path exists and is not a directory.
    """
    if value is None:
        return None
    if not isinstance(value, str | pathlib.Path):
        raise TypeError(f"{name} must be a pathlib.Path (or str), but received {_describe(value)}")
    path = pathlib.Path(value)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{name} must be a directory, but {path} is a file")
    return path


def check_gpus(gpus: Any, use_cpu: bool | None) -> list[int]:
    """Check the requested GPU ids against ``use_cpu`` and the machine.

    Args:
        gpus: the ids given (or ``None``).
        use_cpu: the ``use_cpu`` flag given.

    Returns:
        The ids, possibly empty (meaning: every visible GPU when CUDA is used).

    Raises:
        TypeError: if ``gpus`` is not a list of ints.
        ValueError: for conflicting flags, duplicates or ids the machine does not have.
        RuntimeError: if CUDA is requested but not available.
    """
    if gpus is None:
        ids: list[int] = []
    elif isinstance(gpus, list | tuple) and all(_is_int(g) for g in gpus):
        ids = list(gpus)
    else:
        raise TypeError(f"gpus must be None or a list of ints, but received {_describe(gpus)}")

    if use_cpu is not None and not isinstance(use_cpu, bool):
        raise TypeError(f"use_cpu must be None or a bool, but received {_describe(use_cpu)}")
    if use_cpu and ids:
        raise ValueError(f"cannot request CPU and GPU training at once: use_cpu=True, gpus={ids}")
    wants_cuda = use_cpu is False or bool(ids)
    if wants_cuda and not torch.cuda.is_available():
        raise RuntimeError(
            f"CUDA was requested (use_cpu={use_cpu}, gpus={gpus}) but CUDA is not "
            "available on this machine. Pass use_cpu=True to train on the CPU"
        )
    if len(set(ids)) != len(ids):
        raise ValueError(f"gpus contains duplicate ids: {ids}")
    if ids:
        count = torch.cuda.device_count()
        invalid = [g for g in ids if g < 0 or g >= count]
        if invalid:
            raise ValueError(
                f"gpus={ids} contains ids {invalid} that are not valid: this machine "
                f"has {count} GPU(s), ids 0..{count - 1}"
            )
    return ids


def check_flags(
    *,
    enable_deterministic: bool,
    enable_cudnn_benchmark: bool,
    enable_tensorboard: bool,
    run_path: pathlib.Path | None,
    enable_file_logging: bool,
    log_path: pathlib.Path | None,
    chkpt_frequency: int | None,
    chkpt_root: pathlib.Path | None,
    src_root: pathlib.Path | None,
) -> None:
    """Check the combinations of flags and the paths they need.

    Args:
        enable_deterministic: the flag given.
        enable_cudnn_benchmark: the flag given.
        enable_tensorboard: the flag given.
        run_path: the TensorBoard folder.
        enable_file_logging: the flag given.
        log_path: the log folder.
        chkpt_frequency: the checkpoint frequency.
        chkpt_root: the checkpoint folder.
        src_root: the source root for registries.

    Raises:
        ValueError: for a contradictory or incomplete combination.
    """
    if enable_deterministic and enable_cudnn_benchmark:
        raise ValueError(
            "enable_deterministic=True and enable_cudnn_benchmark=True are mutually "
            "exclusive: cuDNN benchmarking picks algorithms non-deterministically"
        )
    if enable_tensorboard and run_path is None:
        raise ValueError("enable_tensorboard=True needs run_path, the folder for TensorBoard runs")
    if enable_file_logging and log_path is None:
        raise ValueError("enable_file_logging=True needs log_path, the folder for log files")
    if chkpt_frequency is not None and chkpt_root is None:
        raise ValueError(
            f"chkpt_frequency={chkpt_frequency} needs chkpt_root, the folder where "
            "checkpoints are saved"
        )
    if src_root is not None and not src_root.is_dir():
        raise ValueError(f"src_root must be an existing directory, but got {src_root}")


def check_loggers(loggers: object) -> list[Any]:
    """Check the ``loggers`` argument: a sequence of experiment loggers.

    Args:
        loggers: the value given (``None``: no loggers).

    Returns:
        The loggers as a list.

    Raises:
        TypeError: if it is not a sequence of :py:class:`helios.loggers.ExperimentLogger`.
    """
    if loggers is None:
        return []
    from helios.loggers.base import ExperimentLogger

    if isinstance(loggers, ExperimentLogger) or not isinstance(loggers, list | tuple):
        raise TypeError(
            "loggers must be a list of helios.loggers loggers (CSVLogger, MLflowLogger, "
            f"WandbLogger), but received {loggers!r}"
        )
    for index, logger in enumerate(loggers):
        if not isinstance(logger, ExperimentLogger):
            raise TypeError(
                f"loggers[{index}] must be a helios.loggers.ExperimentLogger, but "
                f"received {type(logger).__name__}"
            )
    return list(loggers)


def check_precision(precision: Any, uses_cuda: bool) -> str:
    """Check the precision name (see :py:mod:`helios.core.precision`).

    Args:
        precision: the value given.
        uses_cuda: whether the run trains on CUDA devices.

    Returns:
        The name.

    Raises:
        TypeError: for a non-str value.
        ValueError: for an unknown name, or ``"bf16-mixed"`` on a GPU without bfloat16.
    """
    allowed = ", ".join(repr(p) for p in PRECISIONS)
    if not isinstance(precision, str):
        raise TypeError(f"precision must be one of {allowed}, but received {_describe(precision)}")
    if precision not in PRECISIONS:
        raise ValueError(f"invalid precision={precision!r}. Expected one of {allowed}")
    if precision == "bf16-mixed" and uses_cuda and not torch.cuda.is_bf16_supported():
        raise ValueError(
            "precision='bf16-mixed' needs a GPU with bfloat16 support, which this "
            "one lacks; use precision='fp16-mixed'"
        )
    return precision


def check_retention(
    keep_last: Any, keep_best: Any, best_metric: Any, best_mode: Any, prefix: str = "chkpt_"
) -> RetentionPolicy:
    """Check the retention arguments of the Trainer and build the policy.

    Args:
        keep_last: ``chkpt_keep_last``.
        keep_best: ``chkpt_keep_best``.
        best_metric: ``chkpt_best_metric``.
        best_mode: ``chkpt_best_mode``.
        prefix: the prefix of the argument names in messages (pyblaze's saver has none).

    Returns:
        The policy.

    Raises:
        TypeError: for an argument of the wrong type.
        ValueError: for a value out of range or a missing metric.
    """
    for name, value in ((f"{prefix}keep_last", keep_last), (f"{prefix}keep_best", keep_best)):
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(
                f"{name} must be None or an int >= 1, but received {value!r} "
                f"(type {type(value).__name__})"
            )
        if value < 1:
            raise ValueError(f"{name} must be None or an int >= 1, but received {value}")
    if best_metric is not None and (not isinstance(best_metric, str) or not best_metric):
        raise TypeError(
            f"{prefix}best_metric must be None or the non-empty name of a key of the "
            f"model's metrics table, but received {best_metric!r}"
        )
    if best_mode not in ("max", "min"):
        raise ValueError(f"{prefix}best_mode must be 'max' or 'min', but received {best_mode!r}")
    if keep_best is not None and best_metric is None:
        raise ValueError(
            f"{prefix}keep_best={keep_best} needs {prefix}best_metric, the key of the "
            "model's metrics table that ranks checkpoints"
        )
    return RetentionPolicy(keep_last, keep_best, best_metric, best_mode)


def check_bool(name: str, value: Any) -> bool:
    """Check that a flag is a bool.

    Args:
        name: the argument's name.
        value: the value given.

    Returns:
        The flag.

    Raises:
        TypeError: for a non-bool value.
    """
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, but received {_describe(value)}")
    return value


def check_dist_timeout(value: Any) -> datetime.timedelta | None:
    """Check the process-group timeout: ``None``, seconds (> 0, finite) or a timedelta.

    Args:
        value: the value given to the Trainer.

    Returns:
        The timeout, or ``None`` (``HELIOS_DIST_TIMEOUT`` or torch's default applies).

    Raises:
        TypeError: for a value that is neither a number of seconds nor a timedelta.
        ValueError: for a timeout that is not positive and finite.
    """
    if value is None:
        return None
    if isinstance(value, datetime.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise TypeError(
            "dist_timeout must be None, a number of seconds or a datetime.timedelta, but "
            f"received {_describe(value)}"
        )
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(
            "dist_timeout must be a positive, finite duration (seconds or a timedelta), but "
            f"received {value!r}"
        )
    return datetime.timedelta(seconds=seconds)
