"""The running sums of a model's losses since the last validation: :py:class:`RunningLosses`."""

from __future__ import annotations

from typing import Any

import torch


class RunningLosses(dict[str, Any]):
    """The per-key sums of a model's losses since the last validation cycle.

    It is the model's ``_running_losses`` table (a dict, as in Helios 1.2.7:
    ``self._running_losses["loss"] / state.running_iter`` is the running mean), also
    reachable as :py:attr:`helios.model.Model.running_losses`. The default
    :py:meth:`~helios.model.Model.on_training_batch_end` adds each loss of
    ``_loss_items`` to it, :py:meth:`~helios.model.Model.on_validation_end` clears it,
    and it is a checkpoint part of its own (key ``running_losses``), so a run resumed
    between two validations reports the same means.
    """

    def state_dict(self) -> dict[str, Any] | None:
        """Return a copy of the sums as tensors (``None`` when there are none)."""
        return {key: torch.as_tensor(value).clone() for key, value in self.items()} or None

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Replace the sums by saved ones.

        Args:
            state_dict: the sums returned by :py:meth:`state_dict`.
        """
        self.clear()
        self.update(state_dict)


__all__ = ["RunningLosses"]
