"""pyblaze.optim.LAMB."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pyblaze.optim import LAMB


def test_lamb_step_follows_the_formula() -> None:
    p = nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    optimizer = LAMB([p], lr=0.1, betas=(0.8, 0.9), eps=1e-6, weight_decay=0.01, lr_decay=0.5)
    grads = [torch.tensor([0.5, 0.1, -0.3]), torch.tensor([0.2, -0.4, 0.1])]
    m = torch.zeros(3)
    v = torch.zeros(3)
    expected = p.detach().clone()
    for t, g in enumerate(grads, start=1):
        p.grad = g.clone()
        optimizer.step()
        m = 0.8 * m + 0.2 * g
        v = 0.9 * v + 0.1 * g * g
        update = (m / (1 - 0.8**t)) / ((v / (1 - 0.9**t)).sqrt() + 1e-6) + 0.01 * expected
        trust = min(float(expected.norm() / update.norm()), 10.0)
        expected = expected - 0.1 / (1 + 0.5 * t) * trust * update
        torch.testing.assert_close(p.detach(), expected)
    state = optimizer.state_dict()
    fresh = LAMB([nn.Parameter(expected.clone())], lr=0.1)
    fresh.load_state_dict(state)
    assert fresh.state_dict()["state"][0]["step"] == 2


def test_lamb_trains_a_regression() -> None:
    torch.manual_seed(6)
    x = torch.randn(256, 3)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.3
    model = nn.Linear(3, 1)
    optimizer = LAMB(model.parameters(), lr=0.05)
    for _ in range(300):
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
    assert loss.item() < 1e-3
    for kwargs, match in (
        ({"lr": 0}, "lr must be greater than 0"),
        ({"betas": (0.9, 1.0)}, "betas must be two values in"),
        ({"eps": 0}, "eps must be greater than 0"),
        ({"weight_decay": -1}, "weight_decay must be >= 0"),
    ):
        with pytest.raises(ValueError, match=match):
            LAMB(model.parameters(), **kwargs)
