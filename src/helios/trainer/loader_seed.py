"""The seed the loaders shuffle by: the run's ``random_seed``, kept in its checkpoints.

``Trainer(random_seed=...)`` seeds every generator of a run, the loaders' shuffling
included: a split whose :py:class:`~helios.data.DataLoaderParams` keep the default
``random_seed`` is shuffled by the run's seed (:py:attr:`helios.data.DataModule.run_seed`),
so two runs with different seeds see their data in different orders. :py:class:`LoaderSeed`
is a checkpoint part (key ``loader_seed``): a resumed run shuffles by the seed its
checkpoint was written with. A checkpoint without the entry (Helios 1.2.7's, or an earlier
helios's) was written when the loaders took only their ``DataLoaderParams`` seed: it
resumes with that order, as it did.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from helios.core import logging, rng

from .checkpoint.parts import CheckpointPart

if TYPE_CHECKING:
    from helios.data import DataModule


class LoaderSeed(CheckpointPart):
    """The seed the run's loaders shuffle by (key ``loader_seed``).

    With the default seed the loaders shuffle as they always did, and checkpoints get no
    entry (they are unchanged).

    Args:
        datamodule: the run's data module, whose :py:attr:`~helios.data.DataModule.run_seed`
            this part sets.
        seed: the run's ``random_seed`` (the seed of a fresh run).
    """

    name = "loader_seed"

    def __init__(self, datamodule: DataModule, seed: int) -> None:
        self._datamodule = datamodule
        self._seed = seed
        datamodule.run_seed = seed

    def state_dict(self) -> dict[str, Any] | None:
        """Return the seed (``None`` for the default seed: no entry)."""
        seed = self._datamodule.run_seed
        if seed is None or seed == rng.get_default_seed():
            return None
        return {"seed": seed}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Shuffle by the seed the checkpoint was written with."""
        seed = state_dict.get("seed")
        self._datamodule.run_seed = seed if isinstance(seed, int) else None

    def read(self, saved: Mapping[str, Any]) -> None:
        """Take the checkpoint's seed; without one, keep each split's own seed."""
        if self.name in saved:
            self.load_state_dict(saved[self.name])
            return
        self._datamodule.run_seed = None
        if self._seed != rng.get_default_seed():
            logging.get_root_logger().info(
                f"the checkpoint has no loader_seed (written with the default seed, or before "
                f"the loaders took the run's random_seed): the loaders shuffle by their "
                f"DataLoaderParams seeds as they did then, not by random_seed={self._seed}"
            )


__all__ = ["LoaderSeed"]
