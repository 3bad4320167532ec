"""Models: the training code of a network, organised as hooks the trainer calls."""

from .model import Model
from .sharding import shard_network
from .utils import MODEL_REGISTRY, create_model, find_pretrained_file

__all__ = ["MODEL_REGISTRY", "Model", "create_model", "find_pretrained_file", "shard_network"]
