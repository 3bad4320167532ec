"""Core building blocks: registries, loggers, RNG state, precision, CUDA and distributed helpers."""

from helios.core import cuda, distributed, logging, precision, rng
from helios.core.utils import (
    AverageTimer,
    ChdirContext,
    Registry,
    convert_to_list,
    get_env_info_str,
    get_from_optional,
    safe_torch_load,
    update_all_registries,
)

__all__ = [
    "AverageTimer",
    "ChdirContext",
    "Registry",
    "convert_to_list",
    "cuda",
    "distributed",
    "get_env_info_str",
    "get_from_optional",
    "logging",
    "precision",
    "rng",
    "safe_torch_load",
    "update_all_registries",
]
