import pytest
import torch
from torch import nn

import helios.losses as hll
from helios.losses.utils import LOSS_REGISTRY

REFERENCE_LOSSES = {
    "L1Loss",
    "MSELoss",
    "CrossEntropyLoss",
    "CTCLoss",
    "NLLLoss",
    "PoissonNLLLoss",
    "GaussianNLLLoss",
    "KLDivLoss",
    "BCELoss",
    "BCEWithLogitsLoss",
    "MarginRankingLoss",
    "HingeEmbeddingLoss",
    "MultiLabelMarginLoss",
    "HuberLoss",
    "SmoothL1Loss",
    "SoftMarginLoss",
    "MultiLabelSoftMarginLoss",
    "CosineEmbeddingLoss",
    "MultiMarginLoss",
    "TripletMarginLoss",
    "TripletMarginWithDistanceLoss",
}


def test_registry_holds_the_torch_losses() -> None:
    assert hll.LOSS_REGISTRY is LOSS_REGISTRY
    assert str(LOSS_REGISTRY) == "loss"
    assert set(LOSS_REGISTRY.keys()) == REFERENCE_LOSSES
    for name, cls in LOSS_REGISTRY:
        assert cls is getattr(nn, name)


def test_create_loss_passes_arguments() -> None:
    loss = hll.create_loss("MSELoss", reduction="sum")
    assert isinstance(loss, nn.MSELoss)
    value = loss(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0]))
    assert value.item() == pytest.approx(5.0)


def test_create_loss_unknown_name() -> None:
    with pytest.raises(KeyError, match=r"No object called 'NoSuchLoss'.*MSELoss"):
        hll.create_loss("NoSuchLoss")


class _Identity(hll.WeightedLoss):
    def _eval(self, x: torch.Tensor) -> torch.Tensor:
        return x


class _Squared(hll.WeightedLoss):
    def _eval(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return ((pred - target) ** 2).sum()


def test_weighted_loss_scales_eval() -> None:
    assert _Identity(loss_weight=0.5)(torch.tensor(10)) == 5
    assert _Identity()(torch.tensor(3.0)) == 3.0
    assert _Identity().loss_weight == 1.0


def test_weighted_loss_forwards_args_and_gradients() -> None:
    pred = torch.tensor([1.0, 2.0], requires_grad=True)
    loss = _Squared(loss_weight=2.0)(pred, target=torch.zeros(2))
    assert loss.item() == pytest.approx(10.0)
    loss.backward()
    assert pred.grad is not None
    assert torch.allclose(pred.grad, torch.tensor([4.0, 8.0]))


def test_weighted_loss_is_abstract() -> None:
    with pytest.raises(TypeError, match="abstract"):
        hll.WeightedLoss()  # type: ignore[abstract]


@pytest.mark.parametrize("weight", ["1.0", None, True])
def test_weighted_loss_rejects_bad_weight(weight: object) -> None:
    with pytest.raises(TypeError, match=r"loss_weight must be a real number, got"):
        _Identity(loss_weight=weight)  # type: ignore[arg-type]
