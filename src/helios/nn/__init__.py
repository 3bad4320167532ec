from . import swa_utils
from .utils import NETWORK_REGISTRY, create_network, default_init_weights

__all__ = ["NETWORK_REGISTRY", "create_network", "default_init_weights", "swa_utils"]
