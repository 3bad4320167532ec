"""The model registry and helpers to find pre-trained networks."""

from __future__ import annotations

import pathlib
from typing import TYPE_CHECKING, Any

from helios.core.utils import Registry

if TYPE_CHECKING:
    from .model import Model

MODEL_REGISTRY = Registry("model")
"""Registry of :py:class:`~helios.model.model.Model` types.

Register a model with the decorator and build it from its name with :py:func:`create_model`:

.. code-block:: python

    import helios.model as hlm

    @hlm.MODEL_REGISTRY.register
    class MyModel(hlm.Model):
        ...
"""


def create_model(type_name: str, *args: Any, **kwargs: Any) -> Model:
    """Build a model registered in :py:data:`MODEL_REGISTRY`.

    Args:
        type_name: the name the model was registered under.
        *args: positional arguments for the model's constructor.
        **kwargs: keyword arguments for the model's constructor.

    Returns:
        The new model.

    Raises:
        KeyError: if no model is registered under ``type_name``.
    """
    return MODEL_REGISTRY.get(type_name)(*args, **kwargs)


def find_pretrained_file(root: pathlib.Path, name: str) -> pathlib.Path:
    """Find the pre-trained network file called ``name`` in a folder.

    The folder holds ``.pth`` files named ``<folder-name>_<name>_<anything>.pth``; the
    first one (in sorted order) whose stem contains ``<folder-name>_<name>_`` is returned.

    Args:
        root: the folder holding the pre-trained files.
        name: the name of the network.

    Returns:
        The path to the file.

    Raises:
        RuntimeError: if no matching file exists in ``root``.
    """
    pattern = f"{root.stem}_{name}_"
    for path in sorted(root.glob("*.pth")):
        if pattern in path.stem:
            return path
    raise RuntimeError(
        f"unable to find a pretrained network named '{name}' at {root} "
        f"(expected a file named '{pattern}<...>.pth')"
    )
