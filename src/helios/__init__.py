"""Helios: a PyTorch training framework with exact resume."""

from importlib import metadata as _metadata

try:
    __version__: str = _metadata.version("helios-blaze")
except _metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
