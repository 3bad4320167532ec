"""Data handling: data modules, resumable samplers, transforms and image helpers."""

from . import functional, samplers, transforms
from .datamodule import (
    COLLATE_FN_REGISTRY,
    DATASET_REGISTRY,
    DataLoaderParams,
    DataModule,
    DatasetSplit,
    create_collate_fn,
    create_dataloader,
    create_dataset,
)
from .samplers import SAMPLER_REGISTRY, create_sampler
from .transforms import TRANSFORM_REGISTRY, create_transform

__all__ = [
    "COLLATE_FN_REGISTRY",
    "DATASET_REGISTRY",
    "SAMPLER_REGISTRY",
    "TRANSFORM_REGISTRY",
    "DataLoaderParams",
    "DataModule",
    "DatasetSplit",
    "create_collate_fn",
    "create_dataloader",
    "create_dataset",
    "create_sampler",
    "create_transform",
    "functional",
    "samplers",
    "transforms",
]
