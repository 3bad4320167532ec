from .schedulers import CosineAnnealingRestartLR, MultiStepRestartLR
from .utils import SCHEDULER_REGISTRY, create_scheduler

__all__ = [
    "SCHEDULER_REGISTRY",
    "CosineAnnealingRestartLR",
    "MultiStepRestartLR",
    "create_scheduler",
]
