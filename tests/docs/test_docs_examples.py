"""Every Python block of the documentation runs, page by page, as a reader would run it.

Each page's blocks run in order in one fresh namespace, in a fresh temporary working
directory; the page fails at the first block that raises. Blocks marked as needing a GPU or
torchvision (see ``blocks.py``) are left out where those are missing, each reported as a
skipped test with the reason.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import pathlib
import re
import subprocess
import sys
import types
from collections.abc import Iterator

import docs_blocks as blocks
import pytest
import torch

import helios.trainer as hlt
from helios.core import Registry


def _missing(needs: str | None) -> str | None:
    """Why a block cannot run here, or None when it can."""
    if needs is None:
        return None
    if needs == "torchvision":
        # find_spec does not import it: torchvision cannot load on these machines
        return None if importlib.util.find_spec("torchvision") else "needs torchvision"
    count = 1 if needs == "gpu" else int(needs.split()[0])
    if not torch.cuda.is_available() or torch.cuda.device_count() < count:
        return f"needs {needs} (CUDA devices here: {torch.cuda.device_count()})"
    return None


PAGES = [blocks.load(path) for path in blocks.pages()]


def _page_params() -> list[object]:
    return [
        pytest.param(page, id=page.path, marks=[pytest.mark.slow] if page.slow else [])
        for page in PAGES
        if page.blocks
    ]


def _left_out_params() -> list[object]:
    return [
        pytest.param(block, reason, id=f"{block.page}:{block.line}")
        for page in PAGES
        for block in page.blocks
        if (reason := _missing(block.needs))
    ]


def _registries() -> list[Registry]:
    import helios.data as hld
    import helios.losses as hll
    import helios.metrics as hlme
    import helios.model as hlm
    import helios.nn as hln
    import helios.optim as hlo
    import helios.plugins as hlp
    import helios.scheduler as hls

    modules = (hld, hll, hlme, hlm, hln, hlo, hlp, hls)
    return [v for m in modules for v in vars(m).values() if isinstance(v, Registry)]


@pytest.fixture
def _page_sandbox(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A fresh working directory; torch's modes and the registries as they were before.

    The pages' networks are tiny: one intra-op thread runs them fastest, and on a shared
    machine spare threads only spin.
    """
    monkeypatch.chdir(tmp_path)
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    # Pages register their own networks and models: take them out again afterwards.
    registries = {registry: dict(registry._obj_map) for registry in _registries()}
    yield
    for registry, entries in registries.items():
        registry._obj_map.clear()
        registry._obj_map.update(entries)
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
    torch.set_num_threads(threads)


@pytest.mark.parametrize("page", _page_params())
@pytest.mark.usefixtures("_page_sandbox")
def test_page_blocks_run_in_order(page: blocks.Page) -> None:
    namespace: dict[str, object] = {"__name__": "__docs__"}
    docs_path = str(blocks.DOCS / page.path)
    for block in page.blocks:
        if _missing(block.needs):
            continue
        if block.write_to is not None:
            pathlib.Path(block.write_to).write_text(block.code)
            continue
        if block.shell:
            _run_shell(block)
            continue
        # Blank lines in front keep the page's line numbers in tracebacks.
        code = compile("\n" * (block.line - 1) + block.code, docs_path, "exec")
        exec(code, namespace)


def _run_shell(block: blocks.Block) -> None:
    """Run a shell block's commands; the ``helios`` of this Python comes first on PATH."""
    env = dict(os.environ)
    env["PATH"] = f"{pathlib.Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    result = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", block.code],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if result.returncode != 0:
        pytest.fail(
            f"{block.page}:{block.line}: the shell block failed (exit {result.returncode})\n"
            f"{result.stdout}\n{result.stderr}"
        )


@pytest.mark.parametrize(("block", "reason"), _left_out_params())
def test_block_left_out_here(block: blocks.Block, reason: str) -> None:
    pytest.skip(f"{block.page}:{block.line} {reason}")


def test_every_page_is_found_and_has_code() -> None:
    names = {page.path for page in PAGES}
    assert "index.md" in names
    for page in PAGES:
        if page.path.startswith(("tutorials/", "howto/")) or page.path == "getting-started.md":
            assert page.blocks, f"{page.path} has no Python block to run"


def test_markers_are_parsed_and_a_typo_is_an_error() -> None:
    text = (
        "% test: slow\n\n"
        "```python\nx = 1\n```\n\n"
        "% test: needs gpu\n"
        "```python\ny = x.cuda()\n```\n\n"
        "```bash\necho not python\n```\n\n"
        "````{note}\n```python\nz = 2\n```\n````\n\n"
        "```{code-block} python\n:caption: options are not code\nw = 3\n```\n\n"
        "% test: write job.py\n"
        "```python\nprint('a script')\n```\n\n"
        "% test: write run.yaml\n"
        "```yaml\ntrainer: {}\n```\n\n"
        "% test: run\n"
        "```bash\nhelios --version\n```\n"
    )
    page = blocks.parse_page(text, "t.md")
    assert page.slow
    assert [(b.line, b.code, b.needs, b.write_to) for b in page.blocks] == [
        (4, "x = 1\n", None, None),
        (9, "y = x.cuda()\n", "gpu", None),
        (18, "z = 2\n", None, None),
        (24, "w = 3\n", None, None),
        (29, "print('a script')\n", None, "job.py"),
        (34, "trainer: {}\n", None, "run.yaml"),
        (39, "helios --version\n", None, None),
    ]
    assert page.blocks[-1].shell and not page.blocks[-2].shell
    with pytest.raises(ValueError, match=r"t\.md:1: unknown marker '% test: need gpu'"):
        blocks.parse_page("% test: need gpu\n```python\nx\n```\n", "t.md")
    with pytest.raises(ValueError, match="not Python"):
        blocks.parse_page("% test: needs gpu\n```bash\nnvidia-smi\n```\n", "t.md")
    with pytest.raises(ValueError, match="not a shell block"):
        blocks.parse_page("% test: run\n```python\nx = 1\n```\n", "t.md")
    with pytest.raises(ValueError, match="never closed"):
        blocks.parse_page("```python\nx = 1\n", "t.md")


def test_a_failing_block_names_its_page_and_line(tmp_path: pathlib.Path) -> None:
    page = blocks.parse_page("text\n\n```python\nx = 1\nraise RuntimeError(x)\n```\n", "t.md")
    (block,) = page.blocks
    code = compile("\n" * (block.line - 1) + block.code, "t.md", "exec")
    with pytest.raises(RuntimeError) as info:
        exec(code, {})
    assert info.traceback[-1].lineno + 1 == 5  # pytest's line numbers are 0-based


def test_trainer_docstring_explains_every_argument() -> None:
    """The API page of the Trainer lists each argument (signature) with its meaning (Args)."""
    doc = inspect.getdoc(hlt.Trainer) or ""
    args_section = doc.split("Args:", 1)[1].split("Raises:", 1)[0]
    documented = set(re.findall(r"^    (\w+):", args_section, flags=re.MULTILINE))
    parameters = set(inspect.signature(hlt.Trainer).parameters)
    assert parameters == documented


def _docs_conf() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("docs_conf", blocks.DOCS / "conf.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_api_reference_has_a_page_per_public_module_and_documents_each_object_once(
    tmp_path: pathlib.Path,
) -> None:
    conf = _docs_conf()
    modules = conf._write_api_pages(tmp_path)
    assert {"helios.trainer", "helios.trainer.loops", "pyblaze.nn", "pyblaze.nn.engines"} <= set(
        modules
    )
    assert not any(part.startswith("_") for name in modules for part in name.split("."))
    assert sorted(p.stem for p in tmp_path.glob("*.rst")) == sorted(modules)

    def members(name: str) -> list[str]:
        text = (tmp_path / f"{name}.rst").read_text()
        match = re.search(r":members: (.*)", text)
        return match.group(1).split(", ") if match else []

    # Trainer at the path users import it from, not again where it is defined.
    assert "Trainer" in members("helios.trainer")
    assert "Trainer" not in members("helios.trainer.trainer")
    # Registries on the page of the module that assigns them; private bases with their
    # public methods on their module's page.
    assert "PLUGIN_REGISTRY" in members("helios.plugins.plugin")
    assert "_ResumableMixin" in members("helios.data.samplers")
