"""Where checkpoints are: local paths, or URLs of folders in an object store.

A checkpoint in a store is named by a :py:class:`StorePath`, a ``str`` holding its URL with
the path attributes the checkpoint code reads (``name``, ``suffix``, ``parent``);
:py:func:`as_location` turns what a user gave into a path or a :py:class:`StorePath`
(``file://`` URLs are local paths).
"""

from __future__ import annotations

import os
import pathlib
import re

_URL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.\-]*)://")


class StorePath(str):
    """The URL of a checkpoint (or folder) in an object store: a ``str`` with path parts.

    ``StorePath("s3://bucket/runs/net_epoch_2_iter_40.pth").name`` is
    ``"net_epoch_2_iter_40.pth"``; ``/`` joins a name to a folder's URL.
    """

    __slots__ = ()

    def __new__(cls, url: str) -> StorePath:  # noqa: D102
        return super().__new__(cls, url.rstrip("/") if not url.endswith("://") else url)

    @property
    def protocol(self) -> str:
        """The URL's scheme (``"s3"``, ``"gs"``, ...)."""
        match = _URL.match(self)
        return match.group(1).lower() if match else ""

    @property
    def name(self) -> str:
        """The last component of the URL."""
        return self.rsplit("/", 1)[-1]

    @property
    def parent(self) -> StorePath:
        """The URL of the folder holding this one."""
        return StorePath(self.rsplit("/", 1)[0])

    @property
    def suffix(self) -> str:
        """The name's extension (``".pth"``), or ``""``."""
        return pathlib.PurePosixPath(self.name).suffix

    @property
    def stem(self) -> str:
        """The name without its extension."""
        return pathlib.PurePosixPath(self.name).stem

    def with_suffix(self, suffix: str) -> StorePath:
        """Return the URL with another extension."""
        return self.parent / pathlib.PurePosixPath(self.name).with_suffix(suffix).name

    def __truediv__(self, name: str) -> StorePath:
        return StorePath(f"{self}/{name}")

    def __repr__(self) -> str:
        return f"StorePath({str(self)!r})"


Location = pathlib.Path | StorePath
"""A local path or a store URL, where a checkpoint or a folder of checkpoints is."""


def url_protocol(value: object) -> str | None:
    """Return the scheme of a URL given as a string (``None`` for anything else).

    Args:
        value: what the user gave.

    Returns:
        The scheme, lower case, or ``None`` if ``value`` is not a ``<scheme>://`` string.
    """
    if isinstance(value, StorePath):
        return value.protocol
    if not isinstance(value, str):
        return None
    match = _URL.match(value)
    return match.group(1).lower() if match else None


def as_location(value: str | os.PathLike[str]) -> Location:
    """Turn what a user gave (a path, a ``str`` path or URL) into a :py:data:`Location`.

    ``file://`` URLs become local paths.

    Args:
        value: the path or URL.

    Returns:
        A :py:class:`pathlib.Path` or a :py:class:`StorePath`.
    """
    protocol = url_protocol(value)
    if protocol is None:
        return pathlib.Path(value)
    text = str(value)
    if protocol in ("file", "local"):
        return pathlib.Path(text.split("://", 1)[1])
    return StorePath(text)


def check_protocol(location: StorePath, name: str) -> None:
    """Check that fsspec (and the store's own package) can open ``location``.

    Args:
        location: the URL.
        name: the argument's name, for the message.

    Raises:
        ImportError: naming the package that the protocol needs.
        ValueError: for a protocol fsspec does not know.
    """
    try:
        import fsspec
    except ImportError as error:
        raise ImportError(
            f"{name}={str(location)!r} is a URL: checkpoints in an object store need fsspec "
            "and the store's own package; install them with pip install "
            "'helios-blaze[s3]' (S3) or 'helios-blaze[gcs]' / 'helios-blaze[azure]'"
        ) from error
    try:
        fsspec.get_filesystem_class(location.protocol)
    except ValueError as error:
        raise ValueError(
            f"invalid {name}={str(location)!r}: fsspec knows no protocol "
            f"{location.protocol!r} ({error})"
        ) from error
    except ImportError as error:
        raise ImportError(
            f"{name}={str(location)!r} needs the fsspec package of its store: {error}"
        ) from error


__all__ = ["Location", "StorePath", "as_location", "check_protocol", "url_protocol"]
