"""The loss registry and its factory function."""

from __future__ import annotations

from typing import Any

from torch import nn

from helios.core.utils import Registry

LOSS_REGISTRY = Registry("loss")
"""Registry of loss functions, pre-filled with the loss classes of ``torch.nn``."""

LOSS_REGISTRY.register_all(
    (
        nn.L1Loss,
        nn.MSELoss,
        nn.CrossEntropyLoss,
        nn.CTCLoss,
        nn.NLLLoss,
        nn.PoissonNLLLoss,
        nn.GaussianNLLLoss,
        nn.KLDivLoss,
        nn.BCELoss,
        nn.BCEWithLogitsLoss,
        nn.MarginRankingLoss,
        nn.HingeEmbeddingLoss,
        nn.MultiLabelMarginLoss,
        nn.HuberLoss,
        nn.SmoothL1Loss,
        nn.SoftMarginLoss,
        nn.MultiLabelSoftMarginLoss,
        nn.CosineEmbeddingLoss,
        nn.MultiMarginLoss,
        nn.TripletMarginLoss,
        nn.TripletMarginWithDistanceLoss,
    )
)


def create_loss(type_name: str, *args: Any, **kwargs: Any) -> nn.Module:
    """Create a loss function registered in :py:data:`LOSS_REGISTRY`."""
    return LOSS_REGISTRY.create(type_name, *args, **kwargs)
