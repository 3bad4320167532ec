from .utils import LOSS_REGISTRY, create_loss
from .weighted_loss import WeightedLoss

__all__ = ["LOSS_REGISTRY", "WeightedLoss", "create_loss"]
