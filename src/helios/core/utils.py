"""Small utilities shared by every helios package: registries, timers, loaders."""

from __future__ import annotations

import importlib
import os
import pathlib
import platform
import re
import time
import typing
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar, overload

import torch

T = TypeVar("T")
T_Any = TypeVar("T_Any", bound=Any)


def get_env_info_str() -> str:
    """Build the start-up banner with the versions of Helios, PyTorch, Python and the OS.

    Returns:
        The banner text.
    """
    import helios

    separator = "#" + "=" * 75 + "#"
    logo = "\n".join(
        [
            r"    __  __     ___",
            r"   / / / /__  / (_)___  _____",
            r"  / /_/ / _ \/ / / __ \/ ___/",
            r" / __  /  __/ / / /_/ (__  )",
            r"/_/ /_/\___/_/_/\____/____/",
            "",
            "    ",
        ]
    )
    lines = [
        "",
        separator,
        logo,
        "\nEnvironment info: ",
        f"\tHelios: {helios.__version__}",
        f"\tPyTorch: {torch.__version__}",
        f"\tOS: {platform.platform()}",
        f"\tPython: {platform.python_version()}",
    ]
    if torch.cuda.is_available():
        lines.append(f"\tCUDA version: {torch.version.cuda}")
    lines += [separator, "\n"]
    return "\n".join(lines)


def get_from_optional(opt_var: T | None, raise_on_empty: bool = False) -> T:
    """Return the value of an optional after checking that it holds one.

    Args:
        opt_var: the optional value.
        raise_on_empty: raise ``RuntimeError`` instead of ``AssertionError`` when the value
            is ``None``.

    Returns:
        The value, narrowed to its non-optional type.

    Raises:
        RuntimeError: if ``raise_on_empty`` is true and the value is ``None``.
        AssertionError: if ``raise_on_empty`` is false and the value is ``None``.
    """
    if opt_var is None:
        if raise_on_empty:
            raise RuntimeError("optional cannot be empty")
        raise AssertionError("optional cannot be empty")
    return opt_var


def convert_to_list(var: T | list[T] | tuple[T, ...]) -> list[T]:
    """Wrap a value in a list (a list is returned as-is, a tuple is converted).

    Args:
        var: the value, list or tuple.

    Returns:
        A list holding the value(s).
    """
    if isinstance(var, list):
        return var
    if isinstance(var, tuple):
        return list(var)
    return [var]


class ChdirContext:
    """Change the working directory for the duration of a ``with`` block.

    Args:
        target_path: the directory to change into.
    """

    def __init__(self, target_path: pathlib.Path) -> None:
        self.start_path = pathlib.Path.cwd()
        self.target_path = target_path

    def __enter__(self) -> pathlib.Path:
        os.chdir(self.target_path)
        return self.start_path

    def __exit__(self, *args: object) -> None:
        os.chdir(self.start_path)


class AverageTimer:
    """Moving average of the time between consecutive :py:meth:`record` calls.

    Args:
        sliding_window: number of samples after which the running sum restarts.
    """

    def __init__(self, sliding_window: int = 200) -> None:
        self._sliding_window = sliding_window
        self._sum = 0.0
        self._count = 0
        self._avg = 0.0
        self._last = time.time()

    def start(self) -> None:
        """Start (or restart) the timer."""
        self._last = time.time()

    def record(self) -> None:
        """Record the time since the last call (or :py:meth:`start`)."""
        now = time.time()
        self._count += 1
        self._sum += now - self._last
        self._avg = self._sum / self._count
        if self._count > self._sliding_window:
            self._count = 0
            self._sum = 0.0
        self._last = now

    def get_average_time(self) -> float:
        """Return the current average time in seconds (0 before any record)."""
        return self._avg


class Registry:
    """A name to object table used to build objects from configuration strings.

    Objects are registered by their ``__name__`` (plus an optional ``_<suffix>``), either with
    the bare decorator ``@REG.register``, the called decorator ``@REG.register(suffix=...)``
    or a plain call ``REG.register(obj)``.

    Args:
        name: the name of the registry, used in error messages.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._obj_map: dict[str, Any] = {}

    @overload
    def register(self, obj: T_Any, suffix: str | None = None) -> T_Any: ...

    @overload
    def register(self, obj: None = None, suffix: str | None = None) -> Callable[[T_Any], T_Any]: ...

    def register(self, obj: Any = None, suffix: str | None = None) -> Any:
        """Register an object under its ``__name__`` (plus ``_<suffix>`` when given).

        Args:
            obj: the object to register. When omitted, a decorator is returned.
            suffix: optional suffix appended to the key as ``<name>_<suffix>``.

        Returns:
            The object itself (or a decorator when ``obj`` is omitted).

        Registering again an object with the same qualified name (module and
        ``__qualname__``), as when a notebook cell or a script that defines a class runs
        again, replaces the earlier definition quietly.

        Raises:
            ValueError: if the key is already taken by a different object.
        """
        if obj is None:

            def decorator(target: T_Any) -> T_Any:
                return self._add(target, suffix)

            return decorator
        return self._add(obj, suffix)

    def _add(self, obj: T_Any, suffix: str | None) -> T_Any:
        key = obj.__name__ if suffix is None else f"{obj.__name__}_{suffix}"
        registered = self._obj_map.get(key)
        if registered is not None and _qualified_name(registered) != _qualified_name(obj):
            raise ValueError(
                f"an object named '{key}' already exists in the '{self._name}' "
                f"registry ({_qualified_name(registered)}), so {_qualified_name(obj)} cannot "
                f"be registered under that name. Register it under another key with "
                f"register(obj, suffix=...) (the key becomes '{key}_<suffix>'), or rename it. "
                f"Registered names: {self._available()}"
            )
        # The same class defined again (a notebook cell or a module run twice) replaces
        # the older definition.
        self._obj_map[key] = obj
        return obj

    def get(self, name: str, suffix: str | None = None) -> Any:
        """Look up an object by name.

        If ``name`` is missing and ``suffix`` is given, ``<name>_<suffix>`` is tried next.

        Args:
            name: the registered name.
            suffix: optional suffix to try.

        Returns:
            The registered object.

        Raises:
            KeyError: if no object is registered under the name.
        """
        if name in self._obj_map:
            return self._obj_map[name]
        if suffix is not None and f"{name}_{suffix}" in self._obj_map:
            return self._obj_map[f"{name}_{suffix}"]
        raise KeyError(
            f"No object called '{name}' found in the '{self._name}' registry. "
            f"Available names: {self._available()}"
        )

    def register_all(self, objs: Iterable[Any]) -> None:
        """Register every object of ``objs`` under its own name.

        Args:
            objs: the classes or functions.

        Raises:
            ValueError: if a name is already taken.
        """
        for obj in objs:
            self.register(obj)

    def create(self, type_name: str, *args: Any, **kwargs: Any) -> Any:
        """Build the object registered under a name (the ``create_*`` factories use this).

        Args:
            type_name: the registered name.
            *args: positional arguments for its constructor.
            **kwargs: keyword arguments for its constructor.

        Returns:
            The new object.

        Raises:
            KeyError: if no object is registered under ``type_name``.
        """
        return self.get(type_name)(*args, **kwargs)

    def _available(self) -> str:
        return ", ".join(sorted(self._obj_map)) or "(none)"

    def __contains__(self, name: object) -> bool:
        return name in self._obj_map

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        return iter(self._obj_map.items())

    def __len__(self) -> int:
        return len(self._obj_map)

    def __str__(self) -> str:
        return self._name

    def keys(self) -> typing.KeysView[str]:
        """Return the registered names."""
        return self._obj_map.keys()


def _qualified_name(obj: Any) -> str:
    module = getattr(obj, "__module__", None) or "?"
    return f"{module}.{getattr(obj, '__qualname__', getattr(obj, '__name__', repr(obj)))}"


_REGISTER_LINE = re.compile(r"^\s*@.+\.register\b")


def update_all_registries(
    root: pathlib.Path, recurse: bool = True, import_prefix: str = ""
) -> None:
    """Import every module under a package that registers something in a registry.

    A module is imported when one of its lines is a ``@<...>.register`` decorator (with or
    without arguments). The package at ``root`` must be importable (e.g. on ``sys.path``).

    Args:
        root: the directory of the package.
        recurse: descend into sub-packages.
        import_prefix: dotted prefix of the package that contains ``root``.

    Raises:
        RuntimeError: if ``root`` is not a directory or not a Python package.
    """
    if not root.is_dir():
        raise RuntimeError(f"expected {root} to be a valid directory")
    if not (root / "__init__.py").exists():
        raise RuntimeError(f"{root} is not a Python package")
    prefix = root.stem if import_prefix == "" else f"{import_prefix}.{root.stem}"

    modules: list[str] = []
    for path in sorted(root.iterdir()):
        if path.is_dir():
            if (
                recurse
                and not path.name.startswith(("__", "."))
                and (path / "__init__.py").exists()
            ):
                update_all_registries(path, recurse=True, import_prefix=prefix)
            continue
        if path.suffix != ".py" or path.stem == "__init__":
            continue
        with path.open(encoding="utf-8") as file:
            if any(_REGISTER_LINE.match(line) for line in file):
                modules.append(f"{prefix}.{path.stem}")
    for module in modules:
        importlib.import_module(module)


def safe_torch_load(f: Any, **kwargs: Any) -> Any:
    """Load a file with ``torch.load(..., weights_only=True)``.

    Besides what a weights-only load allows (tensors, builtins, types registered with
    :py:func:`torch.serialization.add_safe_globals`), the file may hold helios's own
    :py:class:`~helios.trainer.TrainingState` and :py:class:`~helios.trainer.TrainingUnit`,
    as every checkpoint does (allowed for this load only).

    Args:
        f: the file (path or file object).
        **kwargs: further arguments for :py:func:`torch.load` (not ``weights_only``).

    Returns:
        The loaded object.

    Raises:
        TypeError: if ``weights_only`` is passed.
    """
    if "weights_only" in kwargs:
        raise TypeError("safe_torch_load always uses weights_only=True")
    from helios.core.training_state import TrainingState, TrainingUnit

    # The context removes what it added on exit: add only what is not registered yet.
    registered = set(map(id, torch.serialization.get_safe_globals()))
    missing: list[Callable[..., Any] | tuple[Callable[..., Any], str]] = [
        t for t in (TrainingState, TrainingUnit) if id(t) not in registered
    ]
    with torch.serialization.safe_globals(missing):
        return torch.load(f, weights_only=True, **kwargs)
