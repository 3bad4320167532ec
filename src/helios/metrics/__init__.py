from .metrics import (
    METRICS_REGISTRY,
    CalculateMAE,
    CalculateMAP,
    CalculatePSNR,
    CalculateSSIM,
    create_metric,
)

__all__ = [
    "METRICS_REGISTRY",
    "CalculateMAE",
    "CalculateMAP",
    "CalculatePSNR",
    "CalculateSSIM",
    "create_metric",
]
