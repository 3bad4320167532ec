"""Make ``import docs_blocks`` work for the docs tests (the tests folders are not packages)."""

from __future__ import annotations

import importlib.util
import pathlib
import sys


def _register_docs_blocks() -> None:
    if "docs_blocks" in sys.modules:
        return
    path = pathlib.Path(__file__).with_name("docs_blocks.py")
    spec = importlib.util.spec_from_file_location("docs_blocks", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["docs_blocks"] = module
    spec.loader.exec_module(module)


_register_docs_blocks()
