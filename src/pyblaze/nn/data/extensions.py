"""The dataset extensions (PyBlaze 1.1.6 path ``pyblaze.nn.data.extensions``).

``loader`` and ``random_split`` are installed on :py:class:`torch.utils.data.Dataset` by
``import pyblaze.nn``; see :py:mod:`pyblaze.nn.data`.
"""

from pyblaze.nn.data import install_dataset_extensions, loader, random_split

__all__ = ["install_dataset_extensions", "loader", "random_split"]
