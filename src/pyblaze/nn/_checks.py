"""Argument checks of ``train``, ``evaluate``, ``predict`` and the callbacks.

Each check raises an error that names the argument, the value received and what was
expected, and returns the argument in the form the caller keeps (a list, a dict, ...).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch.utils.data import DataLoader

from helios.plugins import Plugin
from helios.trainer import Trainer
from pyblaze.nn._metrics import Metric
from pyblaze.nn.callbacks.base import PredictionCallback, TrainingCallback


def check_count(name: str, value: Any, optional: bool = False) -> Any:
    """Check a count: an int >= 1 (or ``None`` when ``optional``).

    Args:
        name: the argument's name (with its owner, e.g. ``"EarlyStopping: patience"``).
        value: the value received.
        optional: whether ``None`` is allowed.

    Returns:
        The value.

    Raises:
        TypeError: if the value is not an int (a bool is not).
        ValueError: if the value is < 1.
    """
    if value is None and optional:
        return None
    expected = "None or an int >= 1" if optional else "an int >= 1"
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be {expected}, but received {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be {expected}, but received {value}")
    return value


def check_instances(
    name: str, values: Any, types: type | tuple[type, ...], expected: str, kind: str
) -> list[Any]:
    """Check a list (or tuple) whose entries must all be instances of ``types``.

    Args:
        name: the argument's name.
        values: the value received; ``None`` means an empty list.
        types: the allowed types of the entries.
        expected: the allowed types, as the message names them.
        kind: what the entries are, as the message names them.

    Returns:
        The entries, as a new list.

    Raises:
        TypeError: if ``values`` is not a list or tuple, or an entry has another type.
    """
    if values is None:
        return []
    if not isinstance(values, list | tuple):
        raise TypeError(f"{name} must be a list of {kind}, but received {type(values).__name__}")
    for value in values:
        if not isinstance(value, types):
            raise TypeError(
                f"{name} must derive from {expected}, but received {value!r} of type "
                f"{type(value).__name__}"
            )
    return list(values)


def check_callbacks(callbacks: Any) -> list[TrainingCallback | PredictionCallback]:
    """Check the ``callbacks`` argument (``None`` or a list of callbacks).

    Args:
        callbacks: the value received.

    Returns:
        The callbacks, as a new list.
    """
    return check_instances(
        "callbacks",
        callbacks,
        (TrainingCallback, PredictionCallback),
        "xnn.TrainingCallback or xnn.PredictionCallback",
        "TrainingCallback/PredictionCallback objects",
    )


def check_metrics(metrics: Any) -> dict[str, Metric]:
    """Check the ``metrics`` argument (``None`` or a dict of named callables).

    Args:
        metrics: the value received.

    Returns:
        The metrics, as a new dict.

    Raises:
        TypeError: if ``metrics`` is not a dict of names (str) to callables.
    """
    metrics = _check_dict("metrics", metrics, "a dict {name: metric(y_pred, y_true)}")
    for name, metric in metrics.items():
        if not isinstance(name, str) or not callable(metric):
            raise TypeError(
                "metrics must map names (str) to callables metric(y_pred, y_true), but "
                f"received {name!r}: {metric!r}"
            )
    return metrics


def _check_dict(name: str, value: Any, expected: str) -> dict[Any, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"{name} must be {expected}, but received {type(value).__name__}")
    return dict(value)


def check_loader(name: str, loader: Any, optional: bool = False) -> Any:
    """Check that a data argument is a :py:class:`~torch.utils.data.DataLoader`.

    Args:
        name: the argument's name.
        loader: the value received.
        optional: whether ``None`` is allowed.

    Returns:
        The loader.

    Raises:
        TypeError: if it is not a data loader.
    """
    if (loader is None and optional) or isinstance(loader, DataLoader):
        return loader
    expected = "a torch.utils.data.DataLoader" + (" or None" if optional else "")
    raise TypeError(f"{name} must be {expected}, but received {type(loader).__name__}")


def num_batches(data: Iterable[Any], iterations: int | None, name: str) -> int | None:
    """Return how many batches of ``data`` to use.

    Args:
        data: the batches.
        iterations: the requested number of batches, if any.
        name: the argument's name.

    Returns:
        ``len(data)``, capped at ``iterations``; ``iterations`` for data without a length;
        ``None`` for data without a length and no ``iterations`` (a stream, used to its
        end).
    """
    try:
        length = len(data)  # type: ignore[arg-type]
    except TypeError:
        return iterations
    return length if iterations is None else min(length, iterations)


def check_batch_kwargs(
    method: Any, owner: str, kwargs: Mapping[str, Any], prefix: str = ""
) -> None:
    """Check, before training starts, that a batch method accepts the given arguments.

    Args:
        method: the bound method (``engine.train_batch``, ``engine.eval_batch``).
        owner: the method's name with its class, for the message.
        kwargs: the keyword arguments it will receive.
        prefix: the prefix the user wrote in front of these arguments.

    Raises:
        TypeError: if the method cannot be called with a batch and these arguments.
    """
    try:
        inspect.signature(method).bind(None, **kwargs)
    except TypeError as error:
        given = sorted(f"{prefix}{k}" for k in kwargs)
        raise TypeError(
            f"{owner} cannot be called with the keyword arguments given to fit ({given}): {error}"
        ) from None


# Trainer arguments that ``train`` derives from its own arguments.
RESERVED_TRAINER_OPTIONS = ("train_unit", "total_steps", "valid_frequency", "use_cpu", "gpus")
# Trainer arguments that ``train`` takes as arguments of its own (the engine uses them too).
FIT_ARGUMENT_OPTIONS = {"precision": "precision", "enable_compile": "compile", "loggers": "loggers"}


def check_plugins(plugins: Any) -> list[Plugin]:
    """Check the ``plugins`` argument (``None`` or a list of helios plug-ins).

    Args:
        plugins: the value received.

    Returns:
        The plug-ins, as a new list.
    """
    return check_instances("plugins", plugins, Plugin, "helios.plugins.Plugin", "helios plug-ins")


def check_trainer_options(options: Any) -> dict[str, Any]:
    """Check the ``trainer_options`` argument (``None`` or a dict of Trainer arguments).

    Args:
        options: the value received.

    Returns:
        The options, as a new dict.

    Raises:
        TypeError: if ``options`` is not a dict.
        ValueError: if it sets an argument ``train`` derives itself or takes as an argument
            of its own (``precision``, ``enable_compile``, ``loggers``), or one the Trainer
            does not have.
    """
    options = _check_dict("trainer_options", options, "a dict of helios Trainer arguments")
    allowed = set(inspect.signature(Trainer).parameters) - set(RESERVED_TRAINER_OPTIONS)
    reserved = sorted(set(options) & set(RESERVED_TRAINER_OPTIONS))
    if reserved:
        raise ValueError(
            f"trainer_options may not set {reserved}: fit derives them from epochs, "
            "val_data and gpu"
        )
    own = sorted(set(options) & set(FIT_ARGUMENT_OPTIONS))
    if own:
        names = ", ".join(f"{FIT_ARGUMENT_OPTIONS[key]}=" for key in own)
        raise ValueError(
            f"trainer_options may not set {own}: pass fit's own argument(s) {names} instead "
            "(the engine's training step follows them)"
        )
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(
            f"trainer_options has unknown Trainer arguments {unknown}; expected some of "
            f"{sorted(allowed)}"
        )
    return options


def check_clip(name: str, value: Any) -> float | None:
    """Check a gradient clipping limit: ``None`` or a number > 0.

    Args:
        name: the argument's name.
        value: the value received.

    Returns:
        The limit as a float, or ``None``.

    Raises:
        TypeError: if it is not a number (a bool is not).
        ValueError: if it is not > 0 (or not finite).
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be None or a number > 0, but received {value!r}")
    if not 0 < value < float("inf"):
        raise ValueError(f"{name} must be None or a finite number > 0, but received {value!r}")
    return float(value)


def check_loss(name: str, loss: Any) -> None:
    """Check a loss argument: a callable ``loss(y_pred, y_true)`` instance.

    Args:
        name: the argument's name (``"loss"``, ``"eval_loss"``).
        loss: the value received.

    Raises:
        TypeError: for a string, a class (``nn.MSELoss`` instead of ``nn.MSELoss()``) or
            anything else that is not callable.
    """
    if isinstance(loss, type):
        raise TypeError(
            f"{name} must be a loss instance, but received the class {loss.__name__}; "
            f"pass {name}={loss.__name__}() instead of {name}={loss.__name__}"
        )
    if isinstance(loss, str) or not callable(loss):
        raise TypeError(
            f"{name} must be a callable loss(y_pred, y_true) such as nn.CrossEntropyLoss(), "
            f"but received {loss!r} of type {type(loss).__name__}"
        )


def check_loss_shapes(loss: Any, prediction: Any, target: Any) -> None:
    """Refuse predictions and targets that a loss would broadcast against each other.

    Predictions of shape ``(N, 1)`` and targets of shape ``(N,)`` broadcast to ``(N, N)``:
    an element-wise loss then compares every prediction with every target and trains on a
    wrong value, with only a warning from torch. Shapes that differ in the way
    classification losses expect (``(N, C)`` against ``(N,)``) pass.

    Args:
        loss: the loss (named in the message).
        prediction: the model's output.
        target: the target.

    Raises:
        ValueError: if both are tensors whose broadcast shape is neither of their shapes.
    """
    if not isinstance(prediction, torch.Tensor) or not isinstance(target, torch.Tensor):
        return
    shape, target_shape = prediction.shape, target.shape
    if shape == target_shape:
        return
    try:
        joint = torch.broadcast_shapes(shape, target_shape)
    except RuntimeError:
        return  # the loss decides (classification losses take other shapes)
    if joint not in (shape, target_shape):
        raise ValueError(
            f"loss {loss!r} received predictions of shape {tuple(shape)} and targets of "
            f"shape {tuple(target_shape)}, which broadcast to {tuple(joint)} and would give a "
            "wrong loss; make them match (e.g. y_pred.squeeze(-1) or y.view(-1, 1))"
        )


def check_batches(data: Any, name: str = "data") -> None:
    """Refuse a single tensor or array where an iterable of batches is expected.

    ``evaluate`` and ``predict`` iterate their data batch by batch; iterating a tensor would
    treat each of its rows as a batch.

    Args:
        data: the value received.
        name: the argument's name.

    Raises:
        TypeError: if ``data`` is a tensor or a NumPy array.
    """
    if isinstance(data, torch.Tensor) or type(data).__module__ == "numpy":
        shape = tuple(getattr(data, "shape", ()))
        raise TypeError(
            f"{name} must be an iterable of batches (a DataLoader, or a list of batches), but "
            f"received a {type(data).__name__} of shape {shape}, whose rows would each be "
            "taken as a batch; wrap it, e.g. DataLoader(TensorDataset(x, y), batch_size=...) "
            "for evaluate or DataLoader(x, batch_size=...) for predict, or override "
            "Estimator.prepare_input"
        )


__all__ = [
    "FIT_ARGUMENT_OPTIONS",
    "RESERVED_TRAINER_OPTIONS",
    "check_batch_kwargs",
    "check_batches",
    "check_callbacks",
    "check_clip",
    "check_count",
    "check_instances",
    "check_loader",
    "check_loss",
    "check_loss_shapes",
    "check_metrics",
    "check_plugins",
    "check_trainer_options",
    "num_batches",
]
