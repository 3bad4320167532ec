"""Checks of the Trainer's constructor arguments.

Every check raises as soon as the Trainer is built, naming the argument, the value received
and what is allowed, so a typo never costs a run.
"""

from __future__ import annotations

import datetime
import math
import pathlib
from collections.abc import Mapping
from typing import Any

import torch

from helios.core.precision import PRECISIONS

from .checkpoint.locations import StorePath, as_location, check_protocol, url_protocol
from .checkpoint.retention import RetentionPolicy
from .monitor import MONITOR_MODES, MonitorSpec, default_mode
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

    As in Helios 1.2.7, a float other than ``math.inf`` is refused, even a whole one
    (``3.0``): a float number of steps is usually a computation gone wrong.

    Args:
        total_steps: the value given to the Trainer.

    Returns:
        The number of steps.

    Raises:
        ValueError: for a negative value or a float other than ``math.inf``.
        TypeError: for a non-numeric value.
    """
    if _is_int(total_steps):
        if total_steps < 0:
            raise ValueError(f"total_steps must be >= 0 or math.inf, but received {total_steps}")
        return int(total_steps)
    if isinstance(total_steps, float):
        if total_steps == math.inf:
            return math.inf
        hint = (
            f"; pass total_steps={int(total_steps)}"
            if total_steps.is_integer() and total_steps >= 0
            else ""
        )
        raise ValueError(
            f"total_steps must be an int or math.inf, but received the float {total_steps}{hint}"
        )
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
    if url_protocol(value) not in (None, "file", "local"):
        raise ValueError(
            f"{name}={value!r} must be a local folder: only chkpt_root may be the URL of an "
            "object store. Log locally and copy the logs to the store (see the guide "
            "'Checkpoints in S3 or GCS')"
        )
    path = as_location(value)
    assert isinstance(path, pathlib.Path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{name} must be a directory, but {path} is a file")
    return path


def check_chkpt_root(value: Any) -> pathlib.Path | StorePath | None:
    """Check ``chkpt_root``: a local folder (path or ``str``), or the URL of a store folder.

    Args:
        value: the value given.

    Returns:
        The folder: a path, or a :py:class:`~helios.trainer.checkpoint.locations.StorePath`
        for a URL (``file://`` URLs are local paths).

    Raises:
        TypeError: for another type.
        ValueError: if a local path is a file, or fsspec knows no such protocol.
        ImportError: if the store's fsspec package is not installed, naming it.
    """
    if value is None:
        return None
    if not isinstance(value, str | pathlib.Path):
        raise TypeError(
            "chkpt_root must be a pathlib.Path, a str path or the URL of a folder in an "
            f"object store (s3://bucket/prefix), but received {_describe(value)}"
        )
    location = as_location(value)
    if isinstance(location, StorePath):
        check_protocol(location, "chkpt_root")
        return location
    return check_path("chkpt_root", location)


def check_storage_options(
    value: Any, chkpt_root: pathlib.Path | StorePath | None
) -> dict[str, Any] | None:
    """Check ``chkpt_storage_options``: fsspec options for a ``chkpt_root`` URL.

    Args:
        value: the value given.
        chkpt_root: the checked ``chkpt_root``.

    Returns:
        The options (a copy), or ``None``.

    Raises:
        TypeError: if it is not a dict with str keys.
        ValueError: if it is given without a URL ``chkpt_root``.
    """
    if value is None:
        return None
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise TypeError(
            "chkpt_storage_options must be None or a dict of fsspec options by name "
            f"(e.g. {{'endpoint_url': ...}}), but received {_describe(value)}"
        )
    if not isinstance(chkpt_root, StorePath):
        raise ValueError(
            f"chkpt_storage_options={dict(value)!r} is only used with a chkpt_root that is "
            f"the URL of a store folder (s3://bucket/prefix), but chkpt_root={chkpt_root!r}"
        )
    return dict(value)


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
    chkpt_root: pathlib.Path | StorePath | None,
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


# Precision values of Lightning, Keras and Hugging Face, and the helios name for each.
_PRECISION_SPELLINGS = {
    **dict.fromkeys(
        ("16", "16-mixed", "fp16", "float16", "half", "amp", "mixed-float16", "16-true"),
        "fp16-mixed",
    ),
    **dict.fromkeys(("bf16", "bf16-true", "bfloat16", "mixed-bfloat16"), "bf16-mixed"),
    **dict.fromkeys(("32", "32-true", "fp32", "float32", "float", "full", "single"), "32"),
}


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
    meant = _PRECISION_SPELLINGS.get(str(precision).lower().replace("_", "-"))
    hint = f'; did you mean precision="{meant}"?' if meant is not None else ""
    if not isinstance(precision, str):
        raise TypeError(
            f"precision must be one of {allowed}, but received {_describe(precision)}{hint}"
        )
    if precision not in PRECISIONS:
        raise ValueError(f"invalid precision={precision!r}. Expected one of {allowed}{hint}")
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
            also = " (or math.inf: keep every one)" if name == "chkpt_keep_last" else ""
            raise TypeError(
                f"{name} must be None or an int >= 1{also}, but received {value!r} "
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
        also = " (or monitor, the run's monitored metric)" if prefix == "chkpt_" else ""
        raise ValueError(
            f"{prefix}keep_best={keep_best} needs {prefix}best_metric{also}, the key of the "
            "model's metrics table that ranks checkpoints"
        )
    return RetentionPolicy(keep_last, keep_best, best_metric, best_mode)


def check_monitor(name: Any, mode: Any, min_delta: Any) -> MonitorSpec | None:
    """Check the monitored metric's arguments.

    Args:
        name: ``monitor``: a key of the model's ``metrics`` table, or ``None``.
        mode: ``monitor_mode``: ``"max"``, ``"min"`` or ``None`` (guessed from the name, see
            :py:func:`helios.trainer.monitor.default_mode`).
        min_delta: ``monitor_min_delta``: a number >= 0.

    Returns:
        The monitored metric, or ``None``.

    Raises:
        TypeError: for an argument of the wrong type.
        ValueError: for a value out of range, or a mode or minimum change without a metric.
    """
    if name is not None and (not isinstance(name, str) or not name):
        raise TypeError(
            "monitor must be None or the non-empty name of a key of the model's metrics "
            f"table, but received {_describe(name)}"
        )
    if mode is not None and mode not in MONITOR_MODES:
        raise ValueError(f"monitor_mode must be 'max' or 'min', but received {mode!r}")
    if isinstance(min_delta, bool) or not isinstance(min_delta, int | float):
        raise TypeError(
            f"monitor_min_delta must be a number >= 0, but received {_describe(min_delta)}"
        )
    if not (math.isfinite(min_delta) and min_delta >= 0):
        raise ValueError(
            f"monitor_min_delta must be a finite number >= 0, but received {min_delta}"
        )
    if name is None:
        for given, value, default in (
            ("monitor_mode", mode, None),
            ("monitor_min_delta", min_delta, 0),
        ):
            if value != default:
                raise ValueError(
                    f"{given}={value!r} needs monitor, the key of the model's metrics table "
                    "that early stopping and keep-best follow (e.g. monitor='accuracy')"
                )
        return None
    return MonitorSpec(name, mode if mode is not None else default_mode(name), float(min_delta))


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
