"""The callbacks of one ``train``, ``evaluate`` or ``predict`` call, dispatched in one place."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from pyblaze.nn.callbacks.base import CallbackException, PredictionCallback, TrainingCallback

_BASE_AFTER_BATCH = (TrainingCallback.after_batch, PredictionCallback.after_batch)


def _nothing(*args: Any) -> None:
    pass


class CallbackList:
    """An ordered list of callbacks that calls a hook on each of them.

    ``after_batch``, the one per-batch hook, is resolved when the list is made: only the
    callbacks whose class overrides it are called, so a run whose callbacks all keep the
    base class's ``after_batch`` pays nothing per batch.

    Args:
        callbacks: the callbacks, in the order their hooks run.
    """

    def __init__(self, callbacks: Iterable[Any]) -> None:
        self.callbacks = list(callbacks)
        self._after_batch = tuple(
            callback.after_batch
            for callback in self.callbacks
            if getattr(type(callback), "after_batch", None) not in _BASE_AFTER_BATCH
        )
        self.batch_hook: Callable[..., None] = _nothing
        """``after_batch`` of this list, the cheapest way: nothing, the one callback's or
        all of them in order."""
        if len(self._after_batch) == 1:
            self.batch_hook = self._after_batch[0]
        elif self._after_batch:
            self.batch_hook = self.after_batch

    @classmethod
    def select(
        cls,
        kind: type[TrainingCallback] | type[PredictionCallback],
        engine: Any,
        callbacks: Iterable[TrainingCallback | PredictionCallback],
        on_rank_zero: bool = True,
    ) -> CallbackList:
        """Make the list of one kind of callbacks: the engine first, then the user's.

        Args:
            kind: :py:class:`TrainingCallback` or :py:class:`PredictionCallback`; other
                callbacks are left out.
            engine: the engine (always the first callback).
            callbacks: the user's callbacks.
            on_rank_zero: whether this process is rank 0; if not, callbacks with
                ``rank_zero_only`` are left out.

        Returns:
            The list.
        """
        chosen = [
            c for c in callbacks if isinstance(c, kind) and (on_rank_zero or not c.rank_zero_only)
        ]
        return cls([engine, *chosen])

    def __iter__(self) -> Any:
        return iter(self.callbacks)

    def call(self, hook: str, *args: Any) -> None:
        """Call a hook on every callback, in order.

        Args:
            hook: the hook's name.
            *args: its arguments.
        """
        for callback in self.callbacks:
            getattr(callback, hook)(*args)

    def call_stoppable(self, hook: str, *args: Any) -> CallbackException | None:
        """Call a hook that may stop training on every callback, in order.

        A :py:class:`CallbackException` does not keep the later callbacks from the hook.

        Args:
            hook: the hook's name.
            *args: its arguments.

        Returns:
            The first :py:class:`CallbackException` raised, or ``None``.
        """
        stop: CallbackException | None = None
        for callback in self.callbacks:
            try:
                getattr(callback, hook)(*args)
            except CallbackException as raised:
                if stop is None:
                    stop = raised
        return stop

    def after_batch(self, *args: Any) -> None:
        """Call ``after_batch`` on the callbacks that override it.

        Args:
            *args: the hook's arguments (the loss in training, ``None`` in prediction).
        """
        for hook in self._after_batch:
            hook(*args)


__all__ = ["CallbackList"]
