"""The numeric precision of a run: autocast settings and the gradient scaler.

A :py:class:`Precision` is created by the :py:class:`~helios.trainer.Trainer` from its
``precision`` argument and reached by the :py:class:`~helios.model.Model` helpers
(:py:meth:`~helios.model.Model.autocast`, :py:meth:`~helios.model.Model.backward`,
:py:meth:`~helios.model.Model.clip_gradients`,
:py:meth:`~helios.model.Model.optimizer_step`), so that one ``train_step`` runs unchanged
at every precision. Its :py:meth:`Precision.state_dict` (the scaler's state) is saved in
every checkpoint.

The names follow the convention "what the weights are kept in / what the maths runs in":

* ``"32"``: everything in float32. The helpers do nothing beyond the plain calls.
* ``"bf16-mixed"``: float32 weights, forward and loss under ``torch.autocast`` in
  bfloat16. bfloat16 has float32's exponent range, so no loss scaling is needed.
* ``"fp16-mixed"``: float32 weights, autocast in float16, and a
  :py:class:`torch.amp.GradScaler` that scales the loss, unscales the gradients before
  clipping and stepping, skips steps whose gradients hold inf/NaN and adapts the scale.

"mixed" is spelled out because the weights stay float32: a later pure half-precision mode
("bf16-true") would need a different name, and ``"16"`` alone would not say which 16-bit
type is meant.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

PRECISIONS = ("32", "bf16-mixed", "fp16-mixed")
"""The precision names a run accepts."""

_DTYPES = {"32": None, "bf16-mixed": torch.bfloat16, "fp16-mixed": torch.float16}


class Precision:
    """Autocast settings and gradient scaler of one run.

    Args:
        name: one of :py:data:`PRECISIONS`.
        device: the device the run computes on (only its type matters: ``"cpu"`` or
            ``"cuda"``).
        **scaler_kwargs: extra arguments of :py:class:`torch.amp.GradScaler`
            (``init_scale``, ``growth_factor``, ``backoff_factor``, ``growth_interval``);
            used only by ``"fp16-mixed"``.

    Raises:
        ValueError: if ``name`` is not one of :py:data:`PRECISIONS`.
    """

    def __init__(
        self, name: str = "32", device: torch.device | str = "cpu", **scaler_kwargs: Any
    ) -> None:
        if name not in PRECISIONS:
            raise ValueError(
                f"invalid precision={name!r}. Expected one of "
                + ", ".join(repr(p) for p in PRECISIONS)
            )
        self._name = name
        self._device_type = torch.device(device).type
        self._dtype: torch.dtype | None = _DTYPES[name]
        self._scaler: torch.amp.GradScaler | None = None
        if name == "fp16-mixed":
            self._scaler = torch.amp.GradScaler(self._device_type, **scaler_kwargs)
        # Ids of the optimizers whose gradients were unscaled since their last step.
        self._unscaled: set[int] = set()
        self._found_inf: list[torch.Tensor] = []

    @property
    def name(self) -> str:
        """The precision's name (one of :py:data:`PRECISIONS`)."""
        return self._name

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The dtype autocast computes in; ``None`` at 32-bit."""
        return self._dtype

    @property
    def device_type(self) -> str:
        """The device type autocast and the scaler work on."""
        return self._device_type

    @property
    def scaler(self) -> torch.amp.GradScaler | None:
        """The gradient scaler (``"fp16-mixed"`` only, else ``None``)."""
        return self._scaler

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Return the context to run the forward pass and the loss in.

        Returns:
            ``torch.autocast`` in the precision's dtype, or a no-op context at 32-bit.
        """
        if self._dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self._device_type, dtype=self._dtype)

    def backward(self, loss: torch.Tensor, **kwargs: Any) -> None:
        """Back-propagate ``loss``, scaled first when a scaler is in use.

        Args:
            loss: the loss (a scalar tensor).
            **kwargs: passed to :py:meth:`torch.Tensor.backward` (``retain_graph``, ...).
        """
        if self._scaler is not None:
            loss = self._scaler.scale(loss)
        loss.backward(**kwargs)

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Divide the gradients of ``optimizer``'s parameters by the scale, once per step.

        Later calls before the optimizer's next :py:meth:`step` do nothing, so clipping
        twice or clipping then stepping never unscales twice. A no-op without a scaler.

        Args:
            optimizer: the optimizer whose gradients to unscale.
        """
        if self._scaler is None or id(optimizer) in self._unscaled:
            return
        self._scaler.unscale_(optimizer)
        self._unscaled.add(id(optimizer))

    def clip_gradients(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        norm_type: float = 2.0,
        max_norm: float | None = None,
        max_value: float | None = None,
    ) -> torch.Tensor | None:
        """Clip the gradients of ``optimizer``'s parameters, unscaling them first.

        Call it once the gradients of the whole step are accumulated, right before
        :py:meth:`step`. With both limits, values are clipped first, then the norm.

        Args:
            optimizer: the optimizer whose parameters' gradients are clipped.
            norm_type: the type of norm for ``max_norm`` (``math.inf`` for the max norm).
            max_norm: scale the gradients so that their total norm is at most this.
            max_value: clamp every gradient element to ``[-max_value, max_value]``.

        Returns:
            The total norm of the gradients before norm clipping (``None`` when only
            ``max_value`` is given).

        Raises:
            ValueError: if neither limit is given or a limit is not positive.
        """
        if max_norm is None and max_value is None:
            raise ValueError("clip_gradients needs max_norm or max_value; neither given")
        for arg, value in (("max_norm", max_norm), ("max_value", max_value)):
            if value is not None and not value > 0:
                raise ValueError(f"{arg} must be > 0, but received {value!r}")
        self.unscale(optimizer)
        params = _parameters_with_grads(optimizer)
        if max_value is not None:
            nn.utils.clip_grad_value_(params, max_value)
        if max_norm is None:
            return None
        return nn.utils.clip_grad_norm_(params, max_norm, norm_type=norm_type)

    def step(self, *optimizers: torch.optim.Optimizer) -> None:
        """Step the optimizers and update the scale.

        With a scaler each optimizer's gradients are unscaled (unless they already were),
        the step is skipped when they hold inf or NaN, and the scale is updated once after
        all optimizers (lowered after a skipped step, raised after ``growth_interval``
        good ones). Without one, this is ``optimizer.step()`` for each.

        Args:
            *optimizers: the optimizers to step, all from the same iteration.
        """
        scaler = self._scaler
        if scaler is None:
            for optimizer in optimizers:
                optimizer.step()
            return
        found: list[torch.Tensor] = []
        for optimizer in optimizers:
            self.unscale(optimizer)
            scaler.step(optimizer)
            # Kept (without synchronising) for last_step_skipped; update() drops them.
            found.extend(scaler._found_inf_per_device(optimizer).values())
        scaler.update()
        self._found_inf = found
        self._unscaled.clear()

    @property
    def last_step_skipped(self) -> bool:
        """Whether the last :py:meth:`step` skipped because of inf/NaN gradients.

        Reading it waits for the device (one synchronisation); always false without a
        scaler.
        """
        return any(bool(found.item()) for found in self._found_inf)

    def state_dict(self) -> dict[str, Any]:
        """Return the state to checkpoint: the name and the scaler's state.

        Returns:
            ``{"name": ..., "scaler": ...}``; ``"scaler"`` is empty without a scaler.
        """
        scaler = {} if self._scaler is None else self._scaler.state_dict()
        return {"name": self._name, "scaler": scaler}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the scaler from a checkpoint's state.

        A checkpoint written at another precision (or without a scaler) leaves this
        precision's scaler fresh, so a run can switch precision when it resumes.

        Args:
            state_dict: the value returned by :py:meth:`state_dict`.
        """
        saved = state_dict.get("scaler") or {}
        if self._scaler is not None and saved:
            self._scaler.load_state_dict(saved)


def _parameters_with_grads(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    params: Iterable[torch.Tensor] = (p for g in optimizer.param_groups for p in g["params"])
    return [p for p in params if p.grad is not None]


__all__ = ["PRECISIONS", "Precision"]
