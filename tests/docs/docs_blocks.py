"""Find the Python code blocks of the documentation pages, with their test markers.

A page is a MyST Markdown file under ``docs/``. Its Python blocks are the fenced blocks
whose info string is ``python`` (or the ``{code-block} python`` directive). The tests run
them in page order, in one namespace per page, so a page reads as one script.

A MyST comment line (``% ...``, not rendered) right before a block's fence marks the block;
anywhere else on the page, ``% test: slow`` marks the page:

* ``% test: needs gpu`` - runs only where CUDA is available.
* ``% test: needs 2 gpus`` - runs only where at least 2 CUDA devices are.
* ``% test: needs torchvision`` - runs only where torchvision imports.
* ``% test: write NAME`` - the block (Python, or a YAML/JSON config, ...) is written to the
  file ``NAME`` in the page's working directory (for a later block to use), not executed.
* ``% test: run`` - on a ``bash``/``console``/``shell`` block: its commands run with
  ``bash -e`` in the page's working directory (the ``helios`` command of the running
  Python first on ``PATH``); a command that fails fails the page.
* ``% test: slow`` (anywhere) - the page's test is marked ``slow``.

Any other ``% test:`` line is an error, so a typo cannot silently skip a block.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re

DOCS = pathlib.Path(__file__).resolve().parents[2] / "docs"

_FENCE = re.compile(r"^(?P<fence>`{3,}|~{3,})\s*(?P<info>.*)$")
_MARKER = re.compile(r"^%\s*test:\s*(?P<what>.*?)\s*$")
_NEEDS = re.compile(r"^needs (?:(?P<count>\d+) gpus|(?P<what>gpu|torchvision))$")
_WRITE = re.compile(r"^write (?P<name>[\w.-]+)$")
_SHELLS = ("bash", "console", "shell", "sh")


@dataclasses.dataclass(frozen=True)
class Block:
    """One Python block of a page.

    Attributes:
        page: the page's path relative to ``docs/``.
        line: the 1-based line of the block's first code line in the page.
        code: the code.
        needs: what the block needs to run: ``"gpu"``, ``"2 gpus"``, ``"torchvision"``, or
            ``None`` when it runs anywhere.
        write_to: the file name the block is written to, for a script that a later block
            runs; ``None`` for a block that runs in the page.
        shell: the block holds shell commands to run (``% test: run``), not Python.
    """

    page: str
    line: int
    code: str
    needs: str | None = None
    write_to: str | None = None
    shell: bool = False


@dataclasses.dataclass(frozen=True)
class Page:
    """The Python blocks of one page, in order, and whether the page is slow."""

    path: str
    blocks: tuple[Block, ...]
    slow: bool


def pages() -> list[pathlib.Path]:
    """Every Markdown page of the documentation, sorted."""
    return sorted(p for p in DOCS.rglob("*.md") if "_build" not in p.parts)


def _is_python(info: str) -> bool:
    words = info.replace("{code-block}", "").replace("{code}", "").split()
    return bool(words) and words[0] in ("python", "py", "python3")


def parse_page(text: str, name: str) -> Page:
    """Split a page into its Python blocks.

    Args:
        text: the page's Markdown source.
        name: the page's name, for error messages and the blocks.

    Returns:
        The page's blocks.

    Raises:
        ValueError: for an unknown ``% test:`` marker, a marker before a block that is not
            Python, or a fence that is never closed.
    """
    lines = text.splitlines()
    blocks: list[Block] = []
    slow = False
    pending: str | None = None
    write_to: str | None = None
    run = False
    containers: list[str] = []  # open fences of directives that hold other blocks ({note})
    index = 0
    while index < len(lines):
        line = lines[index]
        if containers and line.strip() == containers[-1]:
            containers.pop()
            index += 1
            continue
        marker = _MARKER.match(line)
        fence = _FENCE.match(line)
        if marker:
            what = marker.group("what")
            if what == "slow":
                slow = True
            elif _NEEDS.match(what):
                pending = what.removeprefix("needs ")
            elif written := _WRITE.match(what):
                write_to = written.group("name")
            elif what == "run":
                run = True
            else:
                raise ValueError(
                    f"{name}:{index + 1}: unknown marker {line!r}; expected '% test: slow', "
                    "'% test: needs gpu', '% test: needs N gpus', '% test: needs torchvision', "
                    "'% test: write FILE' or '% test: run'"
                )
            index += 1
            continue
        if fence and re.match(r"\{(?!code-block\}|code\})", fence.group("info")):
            containers.append(fence.group("fence"))
            index += 1
            continue
        if fence:
            opening = fence.group("fence")
            start = index + 1
            end = start
            while end < len(lines) and not (
                lines[end].startswith(opening[0] * len(opening))
                and not lines[end].strip(opening[0])
            ):
                end += 1
            if end == len(lines):
                raise ValueError(f"{name}:{index + 1}: the code fence {opening} is never closed")
            body = lines[start:end]
            # directive options (":caption: ...") are not code
            skip = 0
            while skip < len(body) and body[skip].startswith(":"):
                skip += 1
            code = "\n".join(body[skip:]) + "\n"
            language = fence.group("info").replace("{code-block}", "").split()
            if run and not (language and language[0] in _SHELLS):
                raise ValueError(
                    f"{name}:{index + 1}: '% test: run' is on a block that is not a shell "
                    f"block ({', '.join(_SHELLS)})"
                )
            if _is_python(fence.group("info")) or write_to is not None or run:
                blocks.append(Block(name, start + skip + 1, code, pending, write_to, run))
            elif pending is not None:
                raise ValueError(
                    f"{name}:{index + 1}: a '% test:' marker is on a block that is not "
                    "Python; only Python blocks are run"
                )
            pending = write_to = None
            run = False
            index = end + 1
            continue
        if line.strip():
            pending = write_to = None  # a marker applies only to the block right after it
            run = False
        index += 1
    return Page(name, tuple(blocks), slow)


def load(path: pathlib.Path) -> Page:
    """Parse one page of ``docs/``."""
    return parse_page(path.read_text(), path.relative_to(DOCS).as_posix())
