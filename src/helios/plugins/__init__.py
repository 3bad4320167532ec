"""Plug-ins: objects that change the trainer's loops (batch processing, early stop, ...).

:py:mod:`helios.plugins.optuna` is not imported here (it needs the optional Optuna
dependency); import it explicitly.
"""

from .plugin import (
    PLUGIN_REGISTRY,
    CUDAPlugin,
    Plugin,
    UniquePluginOverrides,
    create_plugin,
)

__all__ = [
    "PLUGIN_REGISTRY",
    "CUDAPlugin",
    "Plugin",
    "UniquePluginOverrides",
    "create_plugin",
]
