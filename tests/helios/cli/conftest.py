"""Make ``import cli_support`` work for the tests of the ``helios`` command."""

from __future__ import annotations

import importlib.util
import pathlib
import sys


def _register(name: str) -> None:
    if name in sys.modules:
        return
    path = pathlib.Path(__file__).with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)


_register("cli_support")
