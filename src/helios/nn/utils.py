"""The network registry, its factory function and weight initialisation."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from helios.core.utils import Registry

NETWORK_REGISTRY = Registry("network")
"""Registry of networks (empty until user code registers some)."""


def create_network(type_name: str, *args: Any, **kwargs: Any) -> nn.Module:
    """Create a network registered in :py:data:`NETWORK_REGISTRY`."""
    return NETWORK_REGISTRY.create(type_name, *args, **kwargs)


@torch.no_grad()
def default_init_weights(
    module_list: list[nn.Module] | nn.Module,
    scale: float = 1,
    bias_fill: float = 0,
    **kwargs: Any,
) -> None:
    """Initialise the weights of ``Conv2d``, ``Linear`` and batch-norm layers in place.

    Every sub-module of the given module(s) is visited:

    * ``Conv2d`` and ``Linear``: Kaiming-normal weights multiplied by ``scale``, biases set
      to ``bias_fill``.
    * Batch-norm layers (any ``_BatchNorm``): weights set to 1, biases to ``bias_fill``.
    * Other layers are left untouched.

    Args:
        module_list: a module or a list of modules.
        scale: the factor applied to the Kaiming-initialised weights.
        bias_fill: the value the biases are set to.
        **kwargs: keyword arguments for :py:func:`torch.nn.init.kaiming_normal_` (e.g.
            ``a``, ``mode``, ``nonlinearity``).
    """
    modules = module_list if isinstance(module_list, list) else [module_list]
    for module in modules:
        for m in module.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(m.weight, **kwargs)
                m.weight.mul_(scale)
                if m.bias is not None:
                    m.bias.fill_(bias_fill)
            elif isinstance(m, _BatchNorm):
                if m.weight is not None:
                    m.weight.fill_(1)
                if m.bias is not None:
                    m.bias.fill_(bias_fill)
