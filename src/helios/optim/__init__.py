from .utils import OPTIMIZER_REGISTRY, create_optimizer

__all__ = ["OPTIMIZER_REGISTRY", "create_optimizer"]
