"""Sphinx configuration of the helios documentation.

The API reference is generated at build time by :func:`_write_api_pages`: one page per
public module of ``helios`` and ``pyblaze``, each object documented once, at the shortest
public import path that exports it (``helios.trainer.Trainer``, not
``helios.trainer.trainer.Trainer``); autodoc records the defining module as the canonical
name, so references to either path resolve.
"""

from __future__ import annotations

import importlib
import inspect
import pathlib
import pkgutil
import re
import sys
import types

DOCS = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent / "src"))

project = "helios"
author = "the helios authors"
copyright = "the helios authors"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
root_doc = "index"
html_theme = "alabaster"
html_title = "helios"
html_static_path: list[str] = []

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"show-inheritance": True}
# No network at build time: objects of other libraries are not linked, so nitpicky mode
# ignores references into them (everything of helios and pyblaze must still resolve).
_EXTERNAL = (
    "torch",
    "numpy",
    "np",
    "npt",
    "optuna",
    "tqdm",
    "PIL",
    "onnx",
    "onnxruntime",
    "tensorboard",
    "matplotlib",
    "collections",
    "typing",
    "typing_extensions",
    "pathlib",
    "logging",
    "enum",
    "os",
    "io",
    "multiprocessing",
    "mp",
    "tud",
    "nn",
    "datetime",
    "dataclasses",
    "types",
    "abc",
    "contextlib",
    "concurrent",
    "threading",
    "argparse",
    "random",
    "print",
    "warnings",
    "pickle",
    "_pickle",
    "signal",
    "socket",
    "subprocess",
    "hashlib",
    "mlflow",
    "MlflowClient",
    "wandb",
    "DeviceMesh",
    "MixedPrecisionPolicy",
)
nitpick_ignore_regex = [
    (r"py:.*", rf"({'|'.join(_EXTERNAL)})(\..*)?"),
    (r"py:.*", r"(int|float|str|bool|bytes|dict|list|tuple|set|object|type|None|Any|Callable)"),
    (r"py:.*", r"(Exception|ValueError|TypeError|KeyError|RuntimeError|ImportError|OSError)"),
    (r"py:.*", r"(FileNotFoundError|NotImplementedError|AssertionError|SystemExit|IndexError)"),
    # type variables and private base classes shown by show-inheritance
    (r"py:class", r"(.*\.)?(T|T_\w+|_[A-Z])"),
    # type aliases of signatures (written out where they are defined)
    (r"py:class", r"(GpuArg|Metric|DataLoader|SummaryWriter|Figure|LayerSelector)"),
]
napoleon_use_ivar = True

# -- API reference generation --------------------------------------------------------------

_PACKAGES = ("helios", "pyblaze")
# Underscored methods that the seeds show to users: they are public API here.
_PUBLIC_PRIVATES = (
    "_create_dataset",
    "_register_in_trainer",
    "_append_train_exceptions",
    "_append_test_exceptions",
    "_move_collection_to_device",
    "_eval",
)
_PRIMITIVES = (str, bytes, int, float, bool, tuple, type(None))


def _public_modules() -> list[str]:
    """Every importable public module of the packages, parents before children."""
    names: list[str] = []
    for package in _PACKAGES:
        names.append(package)
        module = importlib.import_module(package)
        for info in pkgutil.walk_packages(module.__path__, prefix=f"{package}."):
            if any(part.startswith("_") for part in info.name.split(".")):
                continue
            names.append(info.name)
    return sorted(names, key=lambda name: (name.count("."), name))


def _assigned_names(module: types.ModuleType) -> set[str]:
    """The names a module assigns at its top level (where autodoc can document data)."""
    try:
        source = inspect.getsource(module)
    except (OSError, TypeError):
        return set()
    return set(re.findall(r"^([A-Za-z]\w*)\s*(?::[^=\n]+)?=", source, flags=re.MULTILINE))


def _members(module: types.ModuleType) -> list[str]:
    """The public names of a module: its ``__all__``, or what it defines itself.

    Data (registries, constants) is listed only by the module that assigns it: autodoc
    documents module data from the source that defines it.
    """
    assigned = _assigned_names(module)
    exported = getattr(module, "__all__", None)
    if exported is not None:
        candidates = [name for name in exported if not name.startswith("_")]
    else:
        candidates = [name for name in vars(module) if not name.startswith("_")]
    names = []
    for name in candidates:
        obj = getattr(module, name, None)
        if obj is None or isinstance(obj, types.ModuleType):
            continue
        if inspect.isclass(obj) or inspect.isfunction(obj):
            if exported is None and obj.__module__ != module.__name__:
                continue
        elif name not in assigned or (exported is None and not name.isupper()):
            continue
        names.append(name)
    return names


def _write_api_pages(out: pathlib.Path) -> list[str]:
    """Write one reST page per public module; return the module names in order."""
    out.mkdir(parents=True, exist_ok=True)
    claimed: set[object] = set()
    pages: dict[str, list[str]] = {}
    private_bases: dict[str, set[str]] = {}
    for name in _public_modules():
        module = importlib.import_module(name)
        members = pages.setdefault(name, [])
        for member in _members(module):
            obj = getattr(module, member)
            key: object = (name, member) if isinstance(obj, _PRIMITIVES) else id(obj)
            if key in claimed:
                continue
            claimed.add(key)
            members.append(member)
            # Private base classes hold public methods (the samplers' set_epoch): document
            # them on the page of the module that defines them.
            for base in obj.__mro__ if inspect.isclass(obj) else ():
                if base.__name__.startswith("_") and base.__module__.startswith(_PACKAGES):
                    private_bases.setdefault(base.__module__, set()).add(base.__name__)
    for name, members in pages.items():
        bases = sorted(private_bases.get(name, ()))
        title = f"``{name}``"
        lines = [title, "=" * len(title), "", f".. automodule:: {name}"]
        if members or bases:
            lines += [
                f"   :members: {', '.join((*members, *bases))}",
                "   :undoc-members:",
                f"   :private-members: {', '.join((*_PUBLIC_PRIVATES, *bases))}",
            ]
        page = "\n".join(lines) + "\n"
        path = out / f"{name}.rst"
        if not path.exists() or path.read_text() != page:
            path.write_text(page)
    for stale in set(out.glob("*.rst")) - {out / f"{n}.rst" for n in pages}:
        stale.unlink()
    return list(pages)


_CLASS_NAMES: dict[str, str] = {}
_FUNCTION_NAMES: dict[int, str] = {}


def _documented_classes(objects: dict) -> dict[str, str]:  # type: ignore[type-arg]
    """Map each documented class's defining path (``module.qualname``) to its documented name."""
    if not _CLASS_NAMES:
        for name, entry in objects.items():
            if entry.objtype != "class" or entry.aliased:
                continue
            obj = _import_dotted(name)
            if inspect.isclass(obj):
                _CLASS_NAMES[f"{obj.__module__}.{obj.__qualname__}"] = name
    return _CLASS_NAMES


def _documented_function(obj: object, objects: dict) -> str | None:  # type: ignore[type-arg]
    """The documented name of a function, wherever it is documented (``None`` if nowhere).

    A function is documented once, at its shortest public path
    (``helios.model.shard_network``); autodoc records no alias at its defining module, so
    ``helios.model.sharding.shard_network`` is found by the function itself.
    """
    if not _FUNCTION_NAMES:
        for name, entry in objects.items():
            if entry.objtype == "function" and not entry.aliased:
                found = _import_dotted(name)
                if inspect.isfunction(found):
                    _FUNCTION_NAMES[id(found)] = name
    return _FUNCTION_NAMES.get(id(obj)) if inspect.isfunction(obj) else None


def _import_dotted(name: str) -> object:
    """Import ``package.module.Class`` (None when it cannot be imported)."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr, None)
        return obj
    return None


def _lookup(target: str, objects: dict, context_class: str | None, context_module: str | None):  # type: ignore[no-untyped-def, type-arg]
    """The documented name a docstring's reference means, or None when unclear."""
    documented = {n for n, e in objects.items() if not e.aliased}
    classes = _documented_classes(objects)
    for prefix in (context_class, context_module, None):
        name = f"{prefix}.{target}" if prefix else target
        if name in documented:
            return name
        if name in objects:  # a canonical alias of a documented object
            node_id = objects[name].node_id
            return next(n for n in documented if objects[n].node_id == node_id)
    # a function named by its defining module, documented at a shorter path
    for prefix in (context_module, None):
        obj = _import_dotted(f"{prefix}.{target}" if prefix else target)
        if (name := _documented_function(obj, objects)) is not None:
            return name
    # "Class.attr" or "attr" of the current class: find the attribute along the MRO
    head, _, attr = target.rpartition(".")
    owner = _lookup(head, objects, context_class, context_module) if head else context_class
    cls = _import_dotted(owner) if owner else None
    if inspect.isclass(cls):
        for base in cls.__mro__:
            base_name = classes.get(f"{base.__module__}.{base.__qualname__}")
            if base_name and f"{base_name}.{attr}" in documented:
                return f"{base_name}.{attr}"
    matches = [n for n in documented if n.endswith("." + target)]
    if context_module:
        local = [n for n in matches if n.startswith(context_module + ".")]
        matches = local or matches
    return matches[0] if len(matches) == 1 else None


def _resolve_missing(app, env, node, contnode):  # type: ignore[no-untyped-def]
    """Resolve a Python reference autodoc left dangling, or leave it to nitpicky mode.

    Docstrings name objects as their own module sees them (``Trainer``, ``set_epoch``,
    ``helios.model.model.Model.setup``); the reference documents them at their public path
    (``helios.trainer.Trainer``), with the defining path as a canonical alias of the class.
    A target resolves to the object in the current class (along its bases) or module, or
    else to the one documented object whose name ends with it. A private name that is not
    documented (``TrainingLoop._end_unit``) is shown as code without a link.
    """
    if node.get("refdomain") != "py":
        return None
    domain = env.get_domain("py")
    target = node["reftarget"].lstrip("~.")
    module = node.get("py:module")
    context_class = node.get("py:class")
    if context_class and module:
        context_class = f"{module}.{context_class}"
    name = _lookup(target, domain.objects, context_class, module)
    if name is None:
        if target.rpartition(".")[2].startswith("_"):
            return contnode  # a private helper named for implementers: shown, not linked
        return None
    return domain.resolve_xref(
        env, node["refdoc"], app.builder, node["reftype"], name, node, contnode
    )


def setup(app):  # type: ignore[no-untyped-def]
    """Generate the API pages before the sources are read; register the reference resolver."""
    app.connect("builder-inited", lambda app: _write_api_pages(DOCS / "api" / "generated"))
    app.connect("missing-reference", _resolve_missing)
    return {"parallel_read_safe": True}
