"""Reading a run's config file: loading, overrides, imports and checking every value.

A config file (YAML, or JSON) describes a run::

    imports: [my_project.parts]     # modules that register your classes
    num_threads: 1                  # torch.set_num_threads (optional)
    model:      {type: Classifier, args: {...}}
    datamodule: {type: DigitsData, args: {...}}
    trainer:    {total_steps: 10, ...}          # the Trainer's arguments
    plugins:    [{type: ..., args: {...}}]
    loggers:    [{type: CSVLogger, args: {...}}]

``type`` names a registered class (the model registry, the plug-in registry), or a class
of the right kind defined in an imported module (data modules, loggers), or a dotted
``module.Class`` path. ``args`` are checked against the class's constructor with
jsonargparse: an unknown key or a value of the wrong type is a :py:class:`ConfigError`
naming the key, the value and what is allowed. A constructor parameter declared as a part
(:py:mod:`helios.cli.specs`: ``NetworkSpec``, ``OptimizerSpec``, ...) takes its own
``{type, args}``, checked against its registry the same way.

The result, :py:class:`ResolvedConfig`, holds the config with every default filled in (what
``--print-config`` prints and what travels with the run) and the checked arguments to build
each part with.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import importlib
import importlib.util
import inspect
import json
import pathlib
import re
import sys
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from .specs import Spec

TOP_LEVEL_KEYS = ("imports", "num_threads", "model", "datamodule", "trainer", "plugins", "loggers")
"""The keys a config file may have."""

_NODE_KEYS = ("type", "args")


class ConfigError(ValueError):
    """A config that cannot run: the message names the key, the value and what is allowed.

    Args:
        key: the dotted path of the key in the config.
        message: what is wrong and what is allowed.
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key


# -- loading and overrides -------------------------------------------------------------------


def require_cli_extra() -> None:
    """Check that the config library is installed.

    Raises:
        ImportError: naming the extra that installs it.
    """
    try:
        import jsonargparse  # noqa: F401
        import yaml  # noqa: F401
    except ImportError as error:
        raise ImportError(
            f"the helios command needs {error.name}: install the cli extra with "
            'pip install "helios-blaze[cli]"'
        ) from error


def load_config_file(path: pathlib.Path) -> dict[str, Any]:
    """Read a YAML or JSON config file into a dictionary.

    Args:
        path: the file (``.json`` is read as JSON, anything else as YAML).

    Returns:
        The config.

    Raises:
        ConfigError: if the file cannot be read or parsed, or is not a mapping.
    """
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError("", f"cannot read the config file {str(path)!r}: {error}") from error
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise ConfigError("", f"the config file {str(path)!r} is not valid: {error}") from error
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            "", f"the config file {str(path)!r} must hold a mapping of keys, not {_show(data)}"
        )
    return data


def parse_override_value(text: str) -> Any:
    """Read a value given on the command line as YAML (``5``, ``0.1``, ``null``, ``[1, 2]``)."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_overrides(tokens: Sequence[str]) -> list[tuple[str, Any]]:
    """Read ``--key.path=value`` (or ``--key.path value``) overrides.

    Args:
        tokens: the command-line words after the config file.

    Returns:
        The ``(dotted key, value)`` pairs, in order.

    Raises:
        ConfigError: for a word that is not an override.
    """
    overrides: list[tuple[str, Any]] = []
    index = 0
    while index < len(tokens):
        token = tokens[index]
        if not token.startswith("--") or len(token) == 2:
            raise ConfigError(
                "", f"unexpected argument {token!r}: overrides are written --key.path=value"
            )
        key, has_value, value = token[2:].partition("=")
        if not has_value:
            if index + 1 >= len(tokens):
                raise ConfigError(key, "the override has no value (--key.path=value)")
            index += 1
            value = tokens[index]
        overrides.append((key, parse_override_value(value)))
        index += 1
    return overrides


def apply_override(config: dict[str, Any], key: str, value: Any) -> None:
    """Set the value at a dotted path of a config (list entries by index).

    Missing mappings on the way are created; whether the key is allowed is checked later.

    Args:
        config: the config, changed in place.
        key: the dotted path (``trainer.total_steps``, ``plugins.0.args.x``).
        value: the new value.

    Raises:
        ConfigError: if the path goes through a value that is not a mapping or a list, or
            names a list entry that does not exist.
    """
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(key, "an override key is a dotted path like trainer.total_steps")
    node: Any = config
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(
                    where, f"{'.'.join(parts[:depth])} is a list of {len(node)} entries"
                )
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
        else:
            raise ConfigError(
                where, f"cannot set a key inside {'.'.join(parts[:depth])}={_show(node)}"
            )


# -- imports ---------------------------------------------------------------------------------


def import_modules(names: Any, base: pathlib.Path) -> list[str]:
    """Import the modules a config names, so their classes are registered.

    A name is a dotted module name (found on ``sys.path``, which gets the config's folder
    and the working directory) or the path of a ``.py`` file (relative to the config's
    folder; its own folder is put on ``sys.path`` so that it can import its neighbours).

    Args:
        names: the ``imports`` entry of the config.
        base: the config file's folder.

    Returns:
        The names, as given.

    Raises:
        ConfigError: if ``imports`` is not a list of strings or a module fails to import.
    """
    if names is None:
        return []
    if isinstance(names, str):
        names = [names]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ConfigError("imports", f"expected a list of module names, got {_show(names)}")
    for folder in (str(pathlib.Path.cwd()), str(base)):
        if folder not in sys.path:
            sys.path.insert(0, folder)
    for index, name in enumerate(names):
        try:
            if name.endswith(".py") or "/" in name:
                _import_file(base / name)
            else:
                importlib.import_module(name)
        except ConfigError:
            raise
        except Exception as error:
            raise ConfigError(
                f"imports.{index}",
                f"importing {name!r} failed: {type(error).__name__}: {error}",
            ) from error
    return list(names)


def _import_file(path: pathlib.Path) -> None:
    path = path.resolve()
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    name = path.stem
    loaded = sys.modules.get(name)
    if loaded is not None and getattr(loaded, "__file__", None) == str(path):
        return
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise


# -- resolving classes -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Kind:
    """A kind of part a config names by ``type``.

    Attributes:
        section: the config key (for messages).
        base: the class every such part derives from.
        registry: the registry names are looked up in first (``None``: none).
    """

    section: str
    base: type
    registry: Any = None


def _subclasses(base: type) -> Iterator[type]:
    seen: set[type] = set()
    todo: list[type] = [base]
    while todo:
        sub: type
        for sub in todo.pop().__subclasses__():
            if sub not in seen:
                seen.add(sub)
                todo.append(sub)
                yield sub


def resolve_type(name: Any, kind: Kind, key: str) -> Any:
    """Find the class a config's ``type`` names.

    Looked up, in order: the kind's registry, the classes deriving from its base that are
    imported (by class name), and a dotted ``module.Class`` path.

    Args:
        name: the ``type`` value.
        kind: what kind of part it is.
        key: the key of the ``type`` value, for messages.

    Returns:
        The class.

    Raises:
        ConfigError: naming the value and the names that are available.
    """
    if not isinstance(name, str) or not name:
        raise ConfigError(key, f"expected the name of a {kind.section} class, got {_show(name)}")
    if kind.registry is not None and name in kind.registry:
        return kind.registry.get(name)
    found = [c for c in _subclasses(kind.base) if c.__name__ == name and not _is_private(c)]
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        where = ", ".join(sorted(f"{c.__module__}.{c.__qualname__}" for c in found))
        raise ConfigError(key, f"{name!r} names several classes ({where}): use a dotted path")
    if "." in name:
        module_name, _, attribute = name.rpartition(".")
        try:
            target = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as error:
            raise ConfigError(key, f"cannot import {name!r}: {error}") from error
        if not (inspect.isclass(target) and issubclass(target, kind.base)):
            raise ConfigError(key, f"{name!r} is not a {kind.base.__name__} class")
        return target
    available = sorted(
        {*(kind.registry.keys() if kind.registry is not None else ())}
        | {c.__name__ for c in _subclasses(kind.base) if not _is_private(c)}
    )
    raise ConfigError(
        key,
        f"no {kind.section} class called {name!r}{_suggest(name, available)}. Available: "
        f"{', '.join(available) or '(none: name the module that defines yours in imports)'}",
    )


def _is_private(cls: type) -> bool:
    return cls.__name__.startswith("_") or (inspect.isabstract(cls) and cls.__module__ == "abc")


# -- checking arguments ----------------------------------------------------------------------


@dataclasses.dataclass
class Checked:
    """A part whose arguments were checked.

    Attributes:
        target: the class (or function) to call.
        kwargs: the arguments to call it with (specs as :py:class:`Spec` objects).
        plain: the arguments as they go into the resolved config (defaults filled in).
    """

    target: Any
    kwargs: dict[str, Any]
    plain: dict[str, Any]


def _spec_shape(hint: Any) -> tuple[str, type[Spec]] | None:
    """Whether a parameter's type is a part: ``("one" | "list" | "dict", spec type)``."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(options) == 1:
            shape = _spec_shape(options[0])
            return (shape[0] + "?", shape[1]) if shape is not None else None
        return None
    if inspect.isclass(hint) and issubclass(hint, Spec) and hint is not Spec:
        return "one", hint
    if origin in (list, Sequence, typing.Sequence):
        (item,) = typing.get_args(hint) or (None,)
        if inspect.isclass(item) and issubclass(item, Spec) and item is not Spec:
            return "list", item
    if origin in (dict, Mapping, typing.Mapping):
        args = typing.get_args(hint)
        if len(args) == 2 and inspect.isclass(args[1]) and issubclass(args[1], Spec):
            return "dict", args[1]
    return None


def _type_hints(target: Any) -> dict[str, Any]:
    function = target.__init__ if inspect.isclass(target) else target
    try:
        return typing.get_type_hints(function)
    except Exception:
        hints: dict[str, Any] = {}
        namespace = getattr(sys.modules.get(function.__module__), "__dict__", {})
        for name, annotation in getattr(function, "__annotations__", {}).items():
            if isinstance(annotation, str):
                try:
                    annotation = eval(annotation, namespace)
                except Exception:
                    continue
            hints[name] = annotation
        return hints


def _parameters(target: Any, supplied: int) -> tuple[list[inspect.Parameter], bool]:
    """The parameters a config may give, and whether ``**kwargs`` takes any other."""
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return [], True
    params = list(signature.parameters.values())
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    skipped = 0
    chosen: list[inspect.Parameter] = []
    var_keyword = False
    for param in params:
        if param.kind in positional and skipped < supplied:
            skipped += 1
            continue
        if param.kind == inspect.Parameter.VAR_KEYWORD:
            var_keyword = True
        elif param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.POSITIONAL_ONLY):
            continue
        else:
            chosen.append(param)
    return chosen, var_keyword


def check_arguments(
    target: Any, args: Any, key: str, supplied: int = 0, skip: Sequence[str] = ()
) -> Checked:
    """Check a part's arguments against the constructor (or function) that takes them.

    Args:
        target: the class or function.
        args: the ``args`` mapping of the config.
        key: the dotted key of ``args``, for messages.
        supplied: leading positional parameters the caller fills in (not in the config).
        skip: parameters the config may not give (filled in elsewhere).

    Returns:
        The checked arguments.

    Raises:
        ConfigError: for a value that is not a mapping, an unknown or missing key, or a
            value of the wrong type, naming the key, the value and what is allowed.
    """
    from jsonargparse import ArgumentParser

    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise ConfigError(key, f"expected a mapping of argument names to values, got {_show(args)}")
    params, var_keyword = _parameters(target, supplied)
    params = [p for p in params if p.name not in skip]
    names = [p.name for p in params]
    unknown = [name for name in args if name not in names]
    if unknown and not var_keyword:
        name = unknown[0]
        raise ConfigError(
            f"{key}.{name}",
            f"unknown key (value {_show(args[name])}){_suggest(name, names)}. "
            f"{_describe(target)} takes: {', '.join(names) or '(no arguments)'}",
        )
    hints = _type_hints(target)
    kwargs: dict[str, Any] = {}
    plain: dict[str, Any] = {}
    parser = ArgumentParser(exit_on_error=False, default_env=False)
    typed: list[str] = []
    for param in params:
        hint = hints.get(param.name, inspect.Parameter.empty)
        shape = _spec_shape(hint)
        given = param.name in args
        if shape is not None:
            if not given and param.default is inspect.Parameter.empty:
                _missing(key, param.name, target)
            value = args[param.name] if given else param.default
            kwargs[param.name], plain[param.name] = _check_specs(
                value, shape, f"{key}.{param.name}"
            )
            continue
        if not given and param.default is inspect.Parameter.empty:
            _missing(key, param.name, target)
        if _add_typed_argument(parser, param, hint):
            typed.append(param.name)
        elif given:
            kwargs[param.name] = args[param.name]
            plain[param.name] = _plain(args[param.name])
        elif _is_plain(param.default):
            plain[param.name] = _plain(param.default)
    given_typed = {name: args[name] for name in typed if name in args}
    parsed, built = _parse(parser, given_typed, key)
    for name in typed:
        value = parsed.get(name)
        if name in args:
            kwargs[name] = built.get(name, value)
        if name in args or _is_plain(value):
            plain[name] = _plain(value)
    for name in unknown:  # taken by **kwargs
        kwargs[name] = args[name]
        plain[name] = _plain(args[name])
    order = {name: index for index, name in enumerate([*names, *unknown])}
    plain = dict(sorted(plain.items(), key=lambda item: order[item[0]]))
    return Checked(target, kwargs, plain)


def _add_typed_argument(parser: Any, param: inspect.Parameter, hint: Any) -> bool:
    """Add a parameter to the jsonargparse parser; False when its type cannot be checked."""
    if hint is inspect.Parameter.empty or hint is Any:
        return False
    default = None if param.default is inspect.Parameter.empty else param.default
    try:
        parser.add_argument(f"--{param.name}", type=hint, default=default)
    except Exception:
        return False
    return True


def _parse(parser: Any, given: dict[str, Any], key: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Check the given values; return them as parsed (plain) and as built (for the call)."""
    from jsonargparse import ArgumentError

    try:
        namespace = parser.parse_object(given)
        instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
        built = instantiate(namespace)  # ``instantiate`` from jsonargparse 4.49 on
    except ArgumentError as error:
        # Find the first key that fails on its own, to name it.
        for name, value in given.items():
            try:
                parser.parse_object({name: value})
            except ArgumentError as single:
                raise ConfigError(f"{key}.{name}", _value_error(value, single)) from None
        raise ConfigError(key, str(error)) from None
    plain: dict[str, Any] = namespace.as_dict()  # nested namespaces as dicts
    return plain, {name: getattr(built, name) for name in plain}


def _value_error(value: Any, error: Exception) -> str:
    text = str(error)
    subtypes = re.search(r"Subtypes: \[(.*)\]", text)
    if subtypes:
        names = re.findall(r"<(?:class|enum) '([\w.]+)'>", subtypes.group(1))
        expected = [name.rpartition(".")[2] for name in names]
        for index, name in enumerate(names):
            members = re.search(rf"member of <enum '{re.escape(name)}'>: (\{{.*\}})", text)
            if members:
                expected[index] += f" {members.group(1)}"
    else:
        expected = []
        for line in text.splitlines():
            line = line.strip().removeprefix("- ")
            if line.startswith("Expected"):
                line = re.sub(r"<(?:class|enum) '([\w.]+)'>", r"\1", line)
                expected.append(
                    line.removeprefix("Expected ").removeprefix("a ").removeprefix("an ")
                )
    if not expected:
        expected = [text.strip().splitlines()[-1]]
    return f"invalid value {_show(value)}: expected {' or '.join(expected)}"


def _missing(key: str, name: str, target: Any) -> None:
    raise ConfigError(f"{key}.{name}", f"missing: {_describe(target)} needs a value for {name!r}")


def _check_specs(value: Any, shape: tuple[str, type[Spec]], key: str) -> tuple[Any, Any]:
    form, spec_type = shape
    if form.endswith("?"):
        if value is None:
            return None, None
        form = form[:-1]
    if form == "one":
        return _check_spec(value, spec_type, key)
    if form == "list":
        if not isinstance(value, list):
            raise ConfigError(key, f"expected a list of {spec_type.kind} parts, got {_show(value)}")
        checked = [_check_spec(item, spec_type, f"{key}.{i}") for i, item in enumerate(value)]
        return [c[0] for c in checked], [c[1] for c in checked]
    if not isinstance(value, dict):
        raise ConfigError(key, f"expected a mapping of {spec_type.kind} parts, got {_show(value)}")
    checked_map = {
        name: _check_spec(item, spec_type, f"{key}.{name}") for name, item in value.items()
    }
    return {k: c[0] for k, c in checked_map.items()}, {k: c[1] for k, c in checked_map.items()}


def _check_spec(value: Any, spec_type: type[Spec], key: str) -> tuple[Spec, dict[str, Any]]:
    if isinstance(value, Spec):
        value = value.to_dict()
    node = _node(value, key)
    registry = spec_type(node["type"]).registry
    if node["type"] not in registry:
        available = sorted(registry.keys())
        raise ConfigError(
            f"{key}.type",
            f"no {spec_type.kind} registered as {node['type']!r}"
            f"{_suggest(node['type'], available)}. Registered: {', '.join(available) or '(none)'}",
        )
    target = registry.get(node["type"])
    checked = check_arguments(target, node.get("args"), f"{key}.args", spec_type.supplied)
    return spec_type(node["type"], checked.kwargs), {"type": node["type"], "args": checked.plain}


def _node(value: Any, key: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(key, f"expected {{type: ..., args: {{...}}}}, got {_show(value)}")
    for name in value:
        if name not in _NODE_KEYS:
            raise ConfigError(
                f"{key}.{name}",
                f"unknown key (value {_show(value[name])}); a part has the keys type and args",
            )
    if "type" not in value:
        raise ConfigError(f"{key}.type", "missing: a part names its class with type")
    return value


def check_node(value: Any, kind: Kind, key: str, skip: Sequence[str] = ()) -> Checked:
    """Resolve and check one ``{type, args}`` entry of a config.

    Args:
        value: the entry.
        kind: what kind of part it is.
        key: its dotted key.
        skip: constructor parameters the config may not give.

    Returns:
        The checked part; ``plain`` is ``{"type": ..., "args": {...}}``.

    Raises:
        ConfigError: for anything wrong with the entry.
    """
    node = _node(value, key)
    target = resolve_type(node["type"], kind, f"{key}.type")
    checked = check_arguments(target, node.get("args"), f"{key}.args", skip=skip)
    return Checked(target, checked.kwargs, {"type": node["type"], "args": checked.plain})


# -- the whole config ------------------------------------------------------------------------


@dataclasses.dataclass
class ResolvedConfig:
    """A checked config, ready to build a run from.

    Attributes:
        data: the config with every default filled in, as plain values (what
            ``--print-config`` prints and what is saved with the run).
        model: the model's class and arguments.
        datamodule: the data module's class and arguments.
        trainer: the Trainer's arguments (without ``loggers``).
        plugins: the plug-ins' classes and arguments.
        loggers: the experiment loggers' classes and arguments.
        num_threads: the number of torch threads, or ``None`` to leave it.
        path: the config file.
    """

    data: dict[str, Any]
    model: Checked
    datamodule: Checked
    trainer: dict[str, Any]
    plugins: list[Checked]
    loggers: list[Checked]
    num_threads: int | None
    path: pathlib.Path


def resolve_config(path: pathlib.Path, overrides: Sequence[tuple[str, Any]] = ()) -> ResolvedConfig:
    """Load a config file, apply the overrides, import its modules and check everything.

    Args:
        path: the config file.
        overrides: ``(dotted key, value)`` pairs from the command line.

    Returns:
        The checked config.

    Raises:
        ConfigError: naming the first key that is wrong, its value and what is allowed.
    """
    from helios.data import DataModule
    from helios.loggers import ExperimentLogger
    from helios.model import MODEL_REGISTRY, Model
    from helios.plugins import PLUGIN_REGISTRY, Plugin
    from helios.trainer import Trainer

    require_cli_extra()
    config = load_config_file(path)
    for key, value in overrides:
        apply_override(config, key, value)
    for key in config:
        if key not in TOP_LEVEL_KEYS:
            raise ConfigError(
                key,
                f"unknown key (value {_show(config[key])}){_suggest(key, TOP_LEVEL_KEYS)}. "
                f"Allowed: {', '.join(TOP_LEVEL_KEYS)}",
            )
    for key in ("model", "datamodule"):
        if key not in config:
            raise ConfigError(key, f"missing: the config names its {key} with {key}.type")
    imports = import_modules(config.get("imports"), path.resolve().parent)
    num_threads = config.get("num_threads")
    if num_threads is not None and (
        isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1
    ):
        raise ConfigError(
            "num_threads", f"expected an integer >= 1 or null, got {_show(num_threads)}"
        )

    model = check_node(config["model"], Kind("model", Model, MODEL_REGISTRY), "model")
    datamodule = check_node(config["datamodule"], Kind("datamodule", DataModule), "datamodule")
    trainer = check_arguments(Trainer, config.get("trainer"), "trainer", skip=("loggers",))
    plugins = [
        check_node(entry, Kind("plugin", Plugin, PLUGIN_REGISTRY), f"plugins.{i}")
        for i, entry in enumerate(_list(config.get("plugins"), "plugins"))
    ]
    loggers = [
        check_node(entry, Kind("logger", ExperimentLogger), f"loggers.{i}")
        for i, entry in enumerate(_list(config.get("loggers"), "loggers"))
    ]
    data = {
        "imports": imports,
        "num_threads": num_threads,
        "model": model.plain,
        "datamodule": datamodule.plain,
        "trainer": trainer.plain,
        "plugins": [p.plain for p in plugins],
        "loggers": [lg.plain for lg in loggers],
    }
    return ResolvedConfig(
        data, model, datamodule, trainer.kwargs, plugins, loggers, num_threads, path
    )


def _list(value: Any, key: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(key, f"expected a list of {{type, args}} entries, got {_show(value)}")
    return value


def dump_config(data: Mapping[str, Any], fmt: str = "yaml") -> str:
    """Write a resolved config as YAML (or JSON), as a config file that runs the same."""
    if fmt == "json":
        return json.dumps(data, indent=2) + "\n"
    import yaml

    return yaml.safe_dump(dict(data), sort_keys=False, default_flow_style=False)


# -- helpers ---------------------------------------------------------------------------------


def _is_plain(value: Any) -> bool:
    if value is None or isinstance(value, bool | int | float | str):
        return True
    if isinstance(value, pathlib.PurePath | enum.Enum):
        return True
    if isinstance(value, list | tuple):
        return all(_is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain(v) for k, v in value.items())
    return False


def _plain(value: Any) -> Any:
    """A value as it is written in a config file."""
    if isinstance(value, Spec):
        return value.to_dict()
    if isinstance(value, pathlib.PurePath):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.name.lower()
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return repr(value)


def _show(value: Any) -> str:
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{text} ({type(value).__name__})" if not isinstance(value, str) else text


def _suggest(name: str, choices: Sequence[str] | typing.KeysView[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _describe(target: Any) -> str:
    return getattr(target, "__qualname__", repr(target))


__all__ = [
    "TOP_LEVEL_KEYS",
    "Checked",
    "ConfigError",
    "Kind",
    "ResolvedConfig",
    "apply_override",
    "check_arguments",
    "check_node",
    "dump_config",
    "import_modules",
    "load_config_file",
    "parse_override_value",
    "parse_overrides",
    "require_cli_extra",
    "resolve_config",
    "resolve_type",
]
