"""The training unit and state (defined in :py:mod:`helios.core.training_state`)."""

from helios.core.training_state import TrainingState, TrainingUnit

__all__ = ["TrainingState", "TrainingUnit"]
