"""Typed model configurations, so a model's architecture can be saved next to its weights.

:py:class:`Config` holds the typed settings; :py:class:`Configurable` builds a module from
them and saves and loads both together.
"""

from __future__ import annotations

import copy
import json
import os
import pathlib
import types
import typing
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

_C = TypeVar("_C", bound="Config")
_M = TypeVar("_M", bound="Configurable")

_MISSING = object()


def _matches(value: Any, annotation: Any) -> bool:
    """Check a value against a type annotation (best effort for generic types)."""
    if annotation is Any or annotation is object:
        return True
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        return any(_matches(value, arg) for arg in typing.get_args(annotation))
    if origin is typing.Literal:
        return value in typing.get_args(annotation)
    if origin is not None:
        return isinstance(value, origin)
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


class Config:
    """Base class of typed configurations.

    The fields are the class annotations of the subclass and of its config base classes; a
    class attribute of the same name is the field's default, a field without one is
    required. Values are checked against the annotations (``int`` is accepted for
    ``float``), then :py:meth:`is_valid` can check relations between them.

    Example:
        .. code-block:: python

            class MLPConfig(xnn.Config):
                in_dim: int
                hidden: list[int] = [64]
                dropout: float = 0.0

                def is_valid(self) -> bool:
                    return 0 <= self.dropout < 1

            config = MLPConfig(in_dim=8)

    Args:
        **kwargs: the values of the fields.

    Raises:
        ValueError: for an unknown or missing field, a value of the wrong type, or when
            :py:meth:`is_valid` returns false.
    """

    def __init__(self, **kwargs: Any) -> None:
        fields = self._fields()
        unknown = sorted(set(kwargs) - set(fields))
        if unknown:
            raise ValueError(
                f"Unknown configuration parameter(s) {unknown} for {type(self).__name__}; "
                f"expected some of {sorted(fields)}"
            )
        for name, annotation in fields.items():
            if name in kwargs:
                value = kwargs[name]
            else:
                value = getattr(type(self), name, _MISSING)
                if value is not _MISSING:
                    # A fresh copy, so instances never share a mutable default.
                    value = copy.deepcopy(value)
            if value is _MISSING:
                raise ValueError(
                    f"Missing required configuration parameter {name!r} for {type(self).__name__}"
                )
            if not _matches(value, annotation):
                raise ValueError(
                    f"Parameter {name!r} of {type(self).__name__} should have type "
                    f"{annotation} but received {value!r} of type {type(value).__name__}"
                )
            setattr(self, name, value)
        if not self.is_valid():
            raise ValueError(
                f"Invalid configuration parameters for {type(self).__name__}: "
                f"{self.to_dict()}. Check the documentation for valid options."
            )

    @classmethod
    def _fields(cls) -> dict[str, Any]:
        hints = typing.get_type_hints(cls)
        return {
            name: hint
            for name, hint in hints.items()
            if typing.get_origin(hint) is not ClassVar and not name.startswith("_")
        }

    def is_valid(self) -> bool:
        """Check relations between the values; override it to add your own rules.

        Returns:
            True if the configuration is valid (always, by default).
        """
        return True

    def to_dict(self) -> dict[str, Any]:
        """Return the values of the fields.

        Returns:
            ``{field: value}``.
        """
        return {name: getattr(self, name) for name in sorted(self._fields())}

    def save(self, file: str | os.PathLike[str]) -> None:
        """Write the configuration as JSON; ``.json`` is appended if missing.

        Parent folders are created. The file is written to a temporary file, synced and
        renamed over the old one, so a crash never leaves a truncated file.

        Args:
            file: the path of the file.
        """
        path = pathlib.Path(file)
        if path.suffix != ".json":
            path = path.with_name(path.name + ".json")
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_json_atomically(self.to_dict(), path)

    @classmethod
    def load(cls: type[_C], file: str | os.PathLike[str]) -> _C:
        """Read a configuration written by :py:meth:`save`.

        Args:
            file: the path of the file (``.json`` is appended if missing).

        Returns:
            The configuration.
        """
        path = pathlib.Path(file)
        if path.suffix != ".json":
            path = path.with_name(path.name + ".json")
        return cls(**json.loads(path.read_text("utf-8")))

    def __repr__(self) -> str:
        return repr(self.to_dict())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Config):
            return NotImplemented
        return type(self) is type(other) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]


class Configurable:
    """Mixin for modules built from a :py:class:`Config`.

    Put it **first** among the base classes and bind the config class with ``__config__``.
    The model is then created either from a config object or from the config's fields as
    keyword arguments; attributes the module does not have are looked up in the config.
    :py:meth:`save` writes the config (``<file>.json``) next to the weights
    (``<file>.pt``) and :py:meth:`load` rebuilds the model from both.

    Example:
        .. code-block:: python

            class MLP(xnn.Configurable, nn.Module):
                __config__ = MLPConfig

                def __init__(self, *args, **kwargs):
                    super().__init__(*args, **kwargs)
                    self.fc = nn.Linear(self.in_dim, self.hidden[0])

            model = MLP(in_dim=8)      # or MLP(MLPConfig(in_dim=8))
            model.save("out/mlp")      # out/mlp.json + out/mlp.pt
            again = MLP.load("out/mlp")

    Args:
        *args: a single config object (or ``None`` for a model without config).
        **kwargs: the config's fields, used instead of a config object.

    Raises:
        TypeError: if both a config object and keyword arguments are given, if more than
            one positional argument is given, or if the object is not a ``__config__``.
    """

    __config__: ClassVar[type[Config] | None] = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        config_cls = type(self).__config__
        if args and kwargs:
            raise TypeError(
                f"{type(self).__name__}: pass either a config object or keyword arguments, not both"
            )
        if len(args) > 1:
            raise TypeError(
                f"{type(self).__name__} takes at most one positional argument (the "
                f"config), but received {len(args)}"
            )
        config: Config | None
        if args:
            config = args[0]
            if config is not None and (config_cls is None or not isinstance(config, config_cls)):
                expected = config_cls.__name__ if config_cls is not None else "None"
                raise TypeError(
                    f"{type(self).__name__} expects a config of type {expected}, but "
                    f"received {type(config).__name__}"
                )
        elif config_cls is not None:
            config = config_cls(**kwargs)
        elif kwargs:
            raise TypeError(
                f"{type(self).__name__} has no __config__, so it takes no keyword "
                f"arguments, but received {sorted(kwargs)}"
            )
        else:
            config = None
        self.__dict__["_config"] = config

    @property
    def config(self) -> Config | None:
        """The configuration the model was built from."""
        return self.__dict__.get("_config")

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)  # type: ignore[misc]
        except AttributeError:
            config = self.__dict__.get("_config")
            if config is not None and name in type(config)._fields():
                return getattr(config, name)
            raise

    @property
    def num_parameters(self) -> int:
        """The number of parameters of the model."""
        return sum(p.numel() for p in self._module().parameters())

    @property
    def num_trainable_parameters(self) -> int:
        """The number of parameters that require gradients."""
        return sum(p.numel() for p in self._module().parameters() if p.requires_grad)

    def _module(self) -> nn.Module:
        if not isinstance(self, nn.Module):
            raise TypeError(
                f"{type(self).__name__} must also derive from torch.nn.Module to use Configurable"
            )
        return self

    def save(self, file: str | os.PathLike[str]) -> None:
        """Write the config to ``<file>.json`` and the weights to ``<file>.pt``.

        Parent folders are created; the weights are copied to the CPU. Each file is written
        to a temporary file, synced and renamed over the old one, so a crash never leaves a
        truncated file or destroys the previous one.

        Args:
            file: the path without extension.
        """
        path = pathlib.Path(file)
        path.parent.mkdir(parents=True, exist_ok=True)
        config = self.config
        payload = {} if config is None else config.to_dict()
        from helios.trainer.checkpoint.io import save_atomically

        state = {k: v.detach().cpu() for k, v in self._module().state_dict().items()}
        save_atomically(state, path.with_name(path.name + ".pt"))
        _write_json_atomically(payload, path.with_name(path.name + ".json"))

    @classmethod
    def load(cls: type[_M], file: str | os.PathLike[str]) -> _M:
        """Rebuild a model saved with :py:meth:`save`.

        Args:
            file: the path without extension.

        Returns:
            The model with the saved config and weights.
        """
        path = pathlib.Path(file)
        config_cls = cls.__config__
        if config_cls is None:
            model = cls(None)
        else:
            model = cls(config_cls.load(path.with_name(path.name + ".json")))
        state = torch.load(path.with_name(path.name + ".pt"), map_location="cpu", weights_only=True)
        model._module().load_state_dict(state)
        return model


__all__ = ["Config", "Configurable"]


def _write_json_atomically(data: Any, path: pathlib.Path) -> None:
    from helios.trainer.checkpoint.io import write_json_atomically

    write_json_atomically(data, path, indent=4, sort_keys=True)
