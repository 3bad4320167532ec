"""pyblaze.nn's modules: StackedLSTMCell, StackedLSTM and WeightedBCELoss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import pyblaze.nn as xnn

# -- StackedLSTMCell / StackedLSTM ------------------------------------------------------------


@pytest.mark.parametrize("cudnn", [True, False])
def test_stacked_lstm_cell_equals_torch_cells_with_the_same_weights(cudnn: bool) -> None:
    torch.manual_seed(0)
    stacked = xnn.StackedLSTMCell(5, [7, 3], cudnn=cudnn)
    reference = [nn.LSTMCell(5, 7), nn.LSTMCell(7, 3)]
    for ours, theirs in zip(stacked.cells, reference, strict=True):
        theirs.load_state_dict(ours.state_dict())  # same names and shapes as torch's cell
    x = torch.randn(4, 5)
    states = [(torch.randn(4, 7), torch.randn(4, 7)), (torch.randn(4, 3), torch.randn(4, 3))]
    for initial in (None, states):
        out, new_states = stacked(x, initial)
        h, expected = x, []
        for k, cell in enumerate(reference):
            h, c = cell(h, None if initial is None else initial[k])
            expected.append((h, c))
        torch.testing.assert_close(out, h)
        for (h1, c1), (h2, c2) in zip(new_states, expected, strict=True):
            torch.testing.assert_close(h1, h2)
            torch.testing.assert_close(c1, c2)
    assert states[0][0].shape == (4, 7)  # the given states are not replaced


@pytest.mark.parametrize("cudnn", [True, False])
@pytest.mark.parametrize("batch_first", [False, True])
def test_stacked_lstm_equals_torch_lstm(cudnn: bool, batch_first: bool) -> None:
    torch.manual_seed(1)
    ours = xnn.StackedLSTM(4, [6, 6], batch_first=batch_first, cudnn=cudnn)
    theirs = nn.LSTM(4, 6, num_layers=2, batch_first=batch_first)
    for layer, cell in enumerate(ours.stacked_cell.cells):
        for name, value in cell.state_dict().items():
            getattr(theirs, f"{name}_l{layer}").data.copy_(value)
    x = torch.randn(3, 5, 4)
    expected, _ = theirs(x)
    torch.testing.assert_close(ours(x), expected)
    last = expected[:, -1] if batch_first else expected[-1]
    torch.testing.assert_close(ours(x, return_sequence=False), last)


def test_stacked_lstm_without_cudnn_has_second_order_gradients() -> None:
    torch.manual_seed(2)
    lstm = xnn.StackedLSTM(2, [4, 3], cudnn=False)
    x = torch.randn(5, 2, 2, requires_grad=True)
    (grad,) = torch.autograd.grad(lstm(x).sum(), x, create_graph=True)
    (second,) = torch.autograd.grad(grad.pow(2).sum(), x)
    assert second.abs().sum() > 0
    with pytest.raises(ValueError, match="one \\(h, c\\) per layer \\(2\\), got 1"):
        lstm.stacked_cell(torch.randn(2, 2), [(torch.zeros(2, 4), torch.zeros(2, 4))])
    with pytest.raises(ValueError, match="hidden_sizes must name at least one layer"):
        xnn.StackedLSTMCell(2, [])


# -- WeightedBCELoss --------------------------------------------------------------------------


@pytest.mark.slow
def test_weighted_bce_loss() -> None:
    class_weight = pytest.importorskip("sklearn.utils.class_weight")
    torch.manual_seed(3)
    pred = torch.rand(12).clamp(0.01, 0.99)
    target = torch.tensor([1, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0.0])
    torch.testing.assert_close(xnn.WeightedBCELoss()(pred, target), nn.BCELoss()(pred, target))

    labels = np.array([0, 0, 0, 1, 0, 1, 0, 0])
    expected_weights = class_weight.compute_class_weight("balanced", classes=np.arange(2), y=labels)
    loss = xnn.WeightedBCELoss(labels=labels)
    np.testing.assert_allclose(loss.weights.numpy(), expected_weights, rtol=1e-6)
    elementwise = nn.BCELoss(reduction="none")(pred, target)
    expected = elementwise * torch.as_tensor(expected_weights, dtype=torch.float)[target.long()]
    torch.testing.assert_close(loss(pred, target), expected.mean())

    ignoring = xnn.WeightedBCELoss(ignore_index=-1)
    masked = torch.where(torch.arange(12) < 4, torch.tensor(-1.0), target)
    torch.testing.assert_close(ignoring(pred, masked), nn.BCELoss()(pred[4:], target[4:]))
    assert "weights" in loss.state_dict()  # moves with the module
    with pytest.raises(ValueError, match=r"classes \[1\] have no sample"):
        xnn.WeightedBCELoss(labels=[0, 2])
