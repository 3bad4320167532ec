from .schedulers import CosineAnnealingRestartLR, MultiStepRestartLR, WarmupCosineLR
from .utils import SCHEDULER_REGISTRY, create_scheduler

__all__ = [
    "SCHEDULER_REGISTRY",
    "CosineAnnealingRestartLR",
    "MultiStepRestartLR",
    "WarmupCosineLR",
    "create_scheduler",
]
