"""The commands of ``docs/howto/cluster.md``, as the cluster tests run them.

A block of that page preceded by a MyST comment ``% cluster: NAME`` (not rendered) is the
command or script ``NAME``; the tests read it from the page, so the documented commands are
the tested ones. :py:func:`torchrun` turns a documented ``torchrun`` line into the command
line a test runs, changing only what differs on the test's machine (the rendezvous host, job
id, process counts, the training script).
"""

from __future__ import annotations

import pathlib
import re
import shlex
import sys
from collections.abc import Sequence

PAGE = pathlib.Path(__file__).resolve().parents[2] / "docs" / "howto" / "cluster.md"
_NAMED = re.compile(r"^% cluster: (?P<name>[\w-]+)\s*$")


def block(name: str) -> str:
    """Return the text of the block named ``name`` on the page."""
    lines = PAGE.read_text().splitlines()
    for index, line in enumerate(lines):
        match = _NAMED.match(line)
        if match is None or match.group("name") != name:
            continue
        start = index + 1
        while start < len(lines) and lines[start].startswith("%"):  # other markers
            start += 1
        if start == len(lines) or not lines[start].startswith("```"):
            raise ValueError(f"{PAGE}:{index + 1}: '% cluster: {name}' is not before a block")
        end = lines.index("```", start + 1)
        return "\n".join(lines[start + 1 : end]) + "\n"
    raise KeyError(f"no block named {name!r} on {PAGE}")


def shell_words(text: str) -> list[str]:
    """Split a shell command (comments and line continuations removed) into words."""
    return shlex.split(text.replace("\\\n", " "), comments=True)


def exports(text: str) -> dict[str, str]:
    """Return the variables that ``export NAME=VALUE`` lines of ``text`` set."""
    found = {}
    for line in text.replace("\\\n", " ").splitlines():
        words = shell_words(line)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            name, value = words[1].split("=", 1)
            found[name] = value
    return found


def torchrun(
    text: str,
    script: pathlib.Path,
    script_args: Sequence[str] = (),
    **options: str | None,
) -> list[str]:
    """Return the argv of the ``torchrun`` line in ``text``.

    ``torchrun`` becomes ``python -m torch.distributed.run`` (this interpreter),
    ``train.py`` becomes ``script`` followed by ``script_args``, and each keyword replaces
    the value of the option of that name (``rdzv_endpoint="host:1234"``), or removes the
    option when None. An option that is not in the documented line is an error, so the test
    cannot drift from the page unnoticed.
    """
    line = next(part for part in text.split("\n\n") if "torchrun" in part)
    words = shell_words(line[line.index("torchrun") :])
    assert words[0] == "torchrun", words
    argv = [sys.executable, "-m", "torch.distributed.run"]
    wanted = {name.replace("_", "-"): value for name, value in options.items()}
    used = set()
    for word in words[1:]:
        if word == "train.py":
            argv += [str(script), *script_args]
            continue
        name = word.split("=", 1)[0].removeprefix("--")
        if name in wanted:
            used.add(name)
            if wanted[name] is not None:
                argv.append(f"--{name}={wanted[name]}")
            continue
        argv.append(word)
    missing = set(wanted) - used
    if missing:
        raise KeyError(f"options {sorted(missing)} are not in the documented command: {line}")
    return argv
