"""pyblaze.nn.DataParallel."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import pyblaze.nn as xnn


class _AutoEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(4, 2)
        self.decoder = nn.Linear(2, 4)
        self.latent_size = 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def test_data_parallel_forwards_attributes_and_wraps_submodules() -> None:
    model = _AutoEncoder()
    wrapped = xnn.DataParallel(model)
    assert isinstance(wrapped, nn.DataParallel)
    assert wrapped.module is model and wrapped.latent_size == 2
    decoder = wrapped.decoder
    assert isinstance(decoder, xnn.DataParallel) and decoder.module is model.decoder
    assert wrapped.decoder is decoder  # one wrapper per submodule
    x = torch.randn(3, 4)
    torch.testing.assert_close(wrapped(x), model(x))
    torch.testing.assert_close(decoder(torch.ones(1, 2)), model.decoder(torch.ones(1, 2)))
    with pytest.raises(AttributeError):
        _ = wrapped.no_such_attribute
