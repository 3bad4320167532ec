"""Callbacks for training in a separate process (PyBlaze 1.1.6 ``callbacks.parallel``).

A typical set-up trains in a child process while the parent decides when each epoch may
start and reads the weights in between, e.g. to run evaluations next to training:

.. code-block:: python

    shared = Model()
    shared.share_memory()
    push, pull = mp.Queue(), mp.Queue()
    # child: model.fit(..., callbacks=[SynchronizationCallback(push, pull),
    #                                  ModelSharingCallback(shared)])
    push.put(True)   # allow one epoch
    pull.get()       # True after every epoch, False when training ended
"""

from __future__ import annotations

from typing import Any

from torch import nn

from pyblaze.nn.callbacks.base import CallbackException, TrainingCallback


class SynchronizationCallback(TrainingCallback):
    """Let another process start every epoch, and tell it when each epoch is done.

    Before each epoch the callback waits for an item on ``push_queue``: a truthy item starts
    the epoch, a falsy one stops training (it raises :py:class:`CallbackException`). After
    each epoch it puts ``True`` on ``pull_queue``; when training ends, ``False``.

    Args:
        push_queue: the queue the other process puts permissions on.
        pull_queue: the queue this callback reports to.
    """

    def __init__(self, push_queue: Any, pull_queue: Any) -> None:
        self.push_queue = push_queue
        self.pull_queue = pull_queue

    def before_epoch(self, current: int, num_iterations: int | None) -> None:
        """Wait for permission to run the epoch.

        Raises:
            CallbackException: if the permission is falsy (training stops).
        """
        if not self.push_queue.get():
            raise CallbackException(
                f"Training stopped by the controlling process before epoch {current + 1}."
            )

    def after_epoch(self, metrics: Any) -> None:
        """Report a finished epoch (``True``)."""
        self.pull_queue.put(True)

    def after_training(self) -> None:
        """Report the end of training (``False``)."""
        self.pull_queue.put(False)


class ModelSharingCallback(TrainingCallback):
    """Load the weights of a shared model into the trained model before every epoch.

    Args:
        shared_model: a model (usually in shared memory, see
            :py:meth:`torch.nn.Module.share_memory`) with the same architecture.
    """

    def __init__(self, shared_model: nn.Module) -> None:
        self.shared_model = shared_model
        self._model: nn.Module | None = None

    def before_training(self, model: nn.Module, num_epochs: int) -> None:
        """Remember the trained model."""
        self._model = model

    def before_epoch(self, current: int, num_iterations: int | None) -> None:
        """Copy the shared model's weights into the trained model."""
        if self._model is not None:
            self._model.load_state_dict(self.shared_model.state_dict())


__all__ = ["ModelSharingCallback", "SynchronizationCallback"]
