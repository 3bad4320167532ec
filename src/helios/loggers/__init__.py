"""Experiment loggers: CSV (always available), MLflow and Weights & Biases.

All implement :py:class:`ExperimentLogger`, whose state is a checkpoint part, so a resumed
run continues the same logged run without duplicated or missing steps. MLflow and W&B are
imported only when their logger opens its run.
"""

from .base import STATE_VERSION, ExperimentLogger, LoggerDestinationError
from .csv_logger import CSVLogger
from .mlflow_logger import MLflowLogger
from .wandb_logger import WandbLogger

__all__ = [
    "STATE_VERSION",
    "CSVLogger",
    "ExperimentLogger",
    "LoggerDestinationError",
    "MLflowLogger",
    "WandbLogger",
]
