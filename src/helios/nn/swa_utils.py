"""Exponential moving average of a network's weights."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class EMA(nn.Module):
    """Keep an exponential moving average (EMA) of a network's weights and buffers.

    The average lives in a deep copy of the network, kept in evaluation mode. Calling the
    module runs that copy.

    Args:
        net: the network to average.
        decay: the weight of the current average in each update, in ``[0, 1]``.
        device: the device for the averaged copy. ``None`` keeps the network's device.
            Updates move the network's values to the copy's device.

    Raises:
        ValueError: if ``decay`` is outside ``[0, 1]``.
    """

    def __init__(
        self, net: nn.Module, decay: float = 0.9997, device: torch.device | None = None
    ) -> None:
        super().__init__()
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"decay must be in [0, 1], got {decay}")
        self._module = copy.deepcopy(net)
        self._module.eval()
        self._decay = decay
        if device is not None:
            self._module.to(device=device)

    @property
    def module(self) -> nn.Module:
        """The averaged copy of the network."""
        return self._module

    @property
    def decay(self) -> float:
        """The weight of the current average in each update."""
        return self._decay

    def _paired_entries(self, net: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
        ema_state = self._module.state_dict()
        net_state = net.state_dict()
        if ema_state.keys() != net_state.keys():
            missing = sorted(ema_state.keys() - net_state.keys())
            unexpected = sorted(net_state.keys() - ema_state.keys())
            raise ValueError(
                "the network's state does not match the averaged network: "
                f"missing keys {missing}, unexpected keys {unexpected}"
            )
        pairs = []
        for key, ema_value in ema_state.items():
            value = net_state[key]
            if ema_value.shape != value.shape:
                raise ValueError(
                    f"shape mismatch for key '{key}': averaged network has "
                    f"{tuple(ema_value.shape)}, network has {tuple(value.shape)}"
                )
            pairs.append((ema_value, value.to(device=ema_value.device)))
        return pairs

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        """Blend the network's weights into the average.

        Entries are paired by their ``state_dict`` key. Each floating-point entry becomes
        ``decay * average + (1 - decay) * value``; other entries (such as the integer
        ``num_batches_tracked`` of batch-norm layers) are copied as they are.

        Args:
            net: the network being trained (same architecture as the averaged copy).

        Raises:
            ValueError: if the state keys or shapes of ``net`` differ from the copy's.
        """
        for ema_value, value in self._paired_entries(net):
            if ema_value.is_floating_point() or ema_value.is_complex():
                ema_value.mul_(self._decay).add_(value, alpha=1.0 - self._decay)
            else:
                ema_value.copy_(value)

    @torch.no_grad()
    def set(self, net: nn.Module) -> None:
        """Copy the network's weights into the average.

        Args:
            net: the network (same architecture as the averaged copy).

        Raises:
            ValueError: if the state keys or shapes of ``net`` differ from the copy's.
        """
        for ema_value, value in self._paired_entries(net):
            ema_value.copy_(value)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Run the averaged network.

        Args:
            *args: positional arguments for the network.
            **kwargs: keyword arguments for the network.

        Returns:
            The averaged network's output.
        """
        return self._module(*args, **kwargs)
